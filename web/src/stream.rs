//! `GET /api/stream`: server-sent events for the live part of the page.
//!
//! Every tick (500 ms by default) the stream sends one `live` event whose
//! data is `{"live": [LiveView…], "summary": Summary, "book_stale": bool}`.
//! Live rows come from the engine's in-memory board and are read on every
//! tick, so the page is at most one tick behind. The stored part of the
//! summary (last price, counts) comes from the state's in-memory cache
//! (refreshed every second); if reading it fails the last good figures are
//! kept, `book_stale` turns true, and the error is logged. Live rows are
//! filtered for the viewer as `/api/live` does: none for the public.

use crate::{
    AppState,
    api::{LiveView, build_summary, live_for},
    routes::Viewer,
    summary::{BookSummary, Summary},
};
use axum::{
    Extension,
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::Stream;
use serde::Serialize;
use std::{convert::Infallible, time::Duration};
use tokio::time::{Interval, MissedTickBehavior};

/// How long a browser waits before reconnecting a dropped stream.
const RETRY: Duration = Duration::from_secs(2);

/// The data of one `live` event.
#[derive(Debug, Serialize)]
struct LiveEvent {
    live: Vec<LiveView>,
    summary: Summary,
    /// True when the last storage read failed and the book figures are old.
    book_stale: bool,
}

/// Per-connection state of the stream.
struct Ticker {
    state: AppState,
    viewer: Viewer,
    interval: Interval,
    book: BookSummary,
    book_stale: bool,
    ticks: u64,
}

impl Ticker {
    async fn next_event(&mut self) -> Event {
        self.interval.tick().await;
        {
            match self.state.book().await {
                Ok(book) => {
                    self.book = book;
                    self.book_stale = false;
                }
                Err(error) => {
                    tracing::warn!(%error, "live stream: reading intervals and settlements failed");
                    self.book_stale = true;
                }
            }
        }
        let first = self.ticks == 0;
        self.ticks = self.ticks.wrapping_add(1);
        let live = self.state.read.live();
        let summary = build_summary(&self.state, &live, self.book.clone());
        let data = LiveEvent {
            live: live_for(&self.viewer, &live),
            summary,
            book_stale: self.book_stale,
        };
        let event = match Event::default().event("live").json_data(&data) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, "live stream: serializing an event failed");
                Event::default().event("error").data("serialization failed")
            }
        };
        if first { event.retry(RETRY) } else { event }
    }
}

/// `GET /api/stream`.
#[utoipa::path(get, path = "/api/stream", tag = "community",
    responses((status = 200, description = "text/event-stream of `live` events", content_type = "text/event-stream"),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tick = state.tick.max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ticker = Ticker {
        state,
        viewer,
        interval,
        book: BookSummary::default(),
        book_stale: false,
        ticks: 0,
    };
    let events = futures::stream::unfold(ticker, |mut ticker| async move {
        let event = ticker.next_event().await;
        Some((Ok(event), ticker))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
