//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the
//! directory at compile time and cargo does not watch it by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
