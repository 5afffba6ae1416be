//! What every handler shares: the read model, the grid's identity, the clock
//! that says what "now" is for the dashboard, the account store and the
//! operator's settings, and the in-memory cache behind the summary.

use crate::accounts::{AccountError, AccountStore};
use crate::summary::BookSummary;
use clearing::operator::Operator;
use clearing::read::{ReadError, ReadModel};
use protocol::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

/// How often the live stream pushes an event by default: twice a second, so
/// the page is at most about half a second behind the read model.
pub const DEFAULT_TICK: Duration = Duration::from_millis(500);

/// How long, in real time, a meter may stay silent before its household
/// counts as offline. Multiplied by the clock's speed, so that a demo running
/// simulated time faster than real time judges staleness in real seconds.
pub const DEFAULT_ONLINE_WINDOW: Duration = Duration::from_secs(30);

/// How often the stored part of the summary (last price, counts) is re-read
/// into memory. It changes once per interval; a second is plenty.
pub const BOOK_CACHE_REFRESH: Duration = Duration::from_secs(1);

/// Settings an operator may change at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Settings {
    /// Whether visitors without an account see the community aggregates.
    pub public_aggregates: bool,
    /// Block-explorer URL of a transaction, with `{tx}` where its hash goes
    /// (e.g. `https://explorer.example/tx/{tx}`); `null` for no links.
    pub explorer_tx_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            public_aggregates: true,
            explorer_tx_url: None,
        }
    }
}

impl Settings {
    /// The explorer link of a transaction, if a template is set. Only
    /// `http(s)` templates are honoured, so a setting can never become a
    /// `javascript:` link on the page.
    pub fn tx_url(&self, tx: &str) -> Option<String> {
        let t = self.explorer_tx_url.as_deref()?;
        if !(t.starts_with("https://") || t.starts_with("http://")) {
            return None;
        }
        let safe: String = tx.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        Some(t.replace("{tx}", &safe))
    }
}

/// The summary's stored part, kept in memory and refreshed by a background
/// task, so that `/api/summary` answers without touching the database.
#[derive(Default)]
pub(crate) struct BookCache {
    value: RwLock<Option<BookSummary>>,
    refresher: OnceLock<()>,
}

impl BookCache {
    fn get(&self) -> Option<BookSummary> {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, book: BookSummary) {
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = Some(book);
    }
}

/// The router's shared state. Cheap to clone: everything heavy is behind an
/// `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// Where every number on the dashboard comes from.
    pub read: Arc<dyn ReadModel>,
    /// The microgrid's name, shown in the page header.
    pub grid: String,
    /// Length of one trading interval in milliseconds (15 min by default).
    pub interval_ms: u64,
    /// The settlement currency as an ISO 4217 code (e.g. `EUR`); the page
    /// formats micro-units with it.
    pub currency: String,
    /// The dashboard's notion of now (simulated in the demo).
    pub clock: Arc<dyn Clock>,
    /// Period of the live event stream.
    pub tick: Duration,
    /// How long before an interval starts its gate closes (the engine's
    /// `gate_lead_ms`), for the countdown.
    pub gate_lead_ms: u64,
    /// Real time a household may stay silent and still count as online.
    pub online_window: Duration,
    /// Accounts and sessions; `None` disables logins (public view only).
    pub accounts: Option<AccountStore>,
    /// The operator's write access to the engine (enrolment approval,
    /// auction parameters); `None` when the dashboard runs without an
    /// engine it may change, and those actions answer 409.
    pub operator: Option<Arc<dyn Operator>>,
    /// Mark cookies `Secure`: set when the dashboard is served over TLS
    /// (directly or behind a proxy). Requests that arrive with
    /// `X-Forwarded-Proto: https` get `Secure` cookies regardless.
    pub secure_cookies: bool,
    pub(crate) settings: Arc<RwLock<Settings>>,
    pub(crate) book_cache: Arc<BookCache>,
}

impl AppState {
    /// State with the defaults: system clock, EUR, a 500 ms live tick, a
    /// 30 s online window, no accounts and public aggregates.
    pub fn new(read: Arc<dyn ReadModel>, grid: impl Into<String>, interval_ms: u64) -> AppState {
        AppState {
            read,
            grid: grid.into(),
            interval_ms,
            currency: "EUR".to_owned(),
            clock: Arc::new(SystemClock),
            tick: DEFAULT_TICK,
            gate_lead_ms: 0,
            online_window: DEFAULT_ONLINE_WINDOW,
            accounts: None,
            operator: None,
            secure_cookies: false,
            settings: Arc::new(RwLock::new(Settings::default())),
            book_cache: Arc::new(BookCache::default()),
        }
    }

    /// Attaches an account store and loads the settings it holds (stored
    /// settings win over `defaults`).
    pub async fn with_accounts(
        mut self,
        accounts: AccountStore,
        defaults: Settings,
    ) -> Result<AppState, AccountError> {
        let mut settings = defaults;
        if let Some(v) = accounts.setting("settings").await? {
            match serde_json::from_str(&v) {
                Ok(stored) => settings = stored,
                Err(error) => tracing::warn!(%error, "ignoring unreadable stored settings"),
            }
        }
        self.settings = Arc::new(RwLock::new(settings));
        self.accounts = Some(accounts);
        Ok(self)
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings (persisted when there is an account store).
    pub async fn set_settings(&self, settings: Settings) -> Result<(), AccountError> {
        if let Some(store) = &self.accounts {
            let json = serde_json::to_string(&settings)
                .map_err(|e| AccountError::Invalid(e.to_string()))?;
            store.set_setting("settings", &json).await?;
        }
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
        Ok(())
    }

    /// The online window in the clock's milliseconds (scaled by its speed).
    pub fn online_window_ms(&self) -> u64 {
        let real = u64::try_from(self.online_window.as_millis()).unwrap_or(u64::MAX);
        real.saturating_mul(self.clock.speed())
    }

    /// The stored part of the summary from memory. The first call reads
    /// storage and starts the background refresher; after that no request
    /// waits for the database.
    pub(crate) async fn book(&self) -> Result<BookSummary, ReadError> {
        if let Some(book) = self.book_cache.get() {
            return Ok(book);
        }
        let book = crate::api::load_book(self).await?;
        self.book_cache.set(book.clone());
        self.book_cache.refresher.get_or_init(|| {
            let weak: Weak<BookCache> = Arc::downgrade(&self.book_cache);
            let state = self.clone();
            // The task must not keep the cache alive: it holds only a weak
            // reference and a state without it.
            let state = AppState {
                book_cache: Arc::new(BookCache::default()),
                ..state
            };
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let mut tick = tokio::time::interval(BOOK_CACHE_REFRESH);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let Some(cache) = weak.upgrade() else { break };
                        match crate::api::load_book(&state).await {
                            Ok(book) => cache.set(book),
                            Err(error) => {
                                tracing::warn!(%error, "refreshing the summary cache failed")
                            }
                        }
                    }
                });
            }
        });
        Ok(book)
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("grid", &self.grid)
            .field("interval_ms", &self.interval_ms)
            .field("currency", &self.currency)
            .field("clock", &self.clock)
            .field("tick", &self.tick)
            .field("online_window", &self.online_window)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explorer_links_use_the_template_and_only_http() {
        let mut s = Settings {
            public_aggregates: true,
            explorer_tx_url: Some("https://explorer.example/tx/{tx}".into()),
        };
        assert_eq!(
            s.tx_url("0xAbC1").as_deref(),
            Some("https://explorer.example/tx/0xAbC1")
        );
        // Only hex-ish characters of the hash reach the URL.
        assert_eq!(
            s.tx_url("0x1\"><script>").as_deref(),
            Some("https://explorer.example/tx/0x1script")
        );
        s.explorer_tx_url = Some("javascript:alert({tx})".into());
        assert_eq!(s.tx_url("0x1"), None);
        s.explorer_tx_url = None;
        assert_eq!(s.tx_url("0x1"), None);
    }
}
