//! `voltshare-agent`: the meter agent role alone, in a process of its own.
//!
//! The same agent `voltshare run` starts for a config's `[meter_agent]`
//! section, but linked into a binary that holds only what the agent needs,
//! so that its resident memory on a small gateway stays low (most of a
//! process's resident memory is the executable's pages it touches; see
//! `voltshare bench agent`). Usage: `voltshare-agent --config FILE`.

fn main() -> std::process::ExitCode {
    controller::meters_cli::agent_main(std::env::args_os().skip(1).collect())
}
