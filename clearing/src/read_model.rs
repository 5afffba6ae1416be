//! The engine's implementation of [`ReadModel`]: interval and settlement
//! summaries from indexed queries, live power and reject counts from memory.

use crate::metrics::Counters;
use crate::read::{
    BillRow, BookOrderRow, DeviceRow, HouseholdOrderRow, HouseholdReadingRow, IntervalDetailRow,
    IntervalRow, LiveRow, MeterRejectRow, OrderBookRow, ParamsRow, ReadError, ReadFuture,
    ReadModel, SettlementDetailRow, SettlementRow, TradeRow, TransferRow, VerifyCheck,
    VerifyReport,
};
use ed25519_dalek::VerifyingKey;
use protocol::{
    ClearingResult, Domain, HouseholdId, IntervalId, LivePower, MeterId, SettlementBatch,
    SignedEnvelope, canonical_json,
};
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Latest live power per meter. Updated from the unsigned `live/+` topic and
/// from accepted readings; newer timestamps win, so a late reading never
/// overwrites fresher live data.
#[derive(Debug, Default)]
pub struct LiveBoard {
    rows: Mutex<BTreeMap<(HouseholdId, MeterId), LiveRow>>,
}

impl LiveBoard {
    /// Records a live sample if it is newer than what is shown.
    pub fn update(&self, p: &LivePower) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (p.household.clone(), p.meter.clone());
        if rows.get(&key).is_some_and(|r| r.ts >= p.ts) {
            return;
        }
        rows.insert(
            key,
            LiveRow {
                household: p.household.clone(),
                meter: p.meter.clone(),
                ts: p.ts,
                grid_power_w: p.grid_power_w,
                pv_power_w: p.pv_power_w,
            },
        );
    }

    /// Every meter's latest sample, sorted by household then meter.
    pub fn rows(&self) -> Vec<LiveRow> {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The engine's read model.
#[derive(Debug, Clone)]
pub struct EngineReadModel {
    pool: SqlitePool,
    counters: Arc<Counters>,
    live: Arc<LiveBoard>,
    params: Option<crate::params::ParamsCell>,
}

impl EngineReadModel {
    /// Shows the engine's auction parameters (configured and changed).
    pub fn with_params(mut self, params: crate::params::ParamsCell) -> EngineReadModel {
        self.params = Some(params);
        self
    }

    /// A read model over the engine's store and memory.
    pub fn new(pool: SqlitePool, counters: Arc<Counters>, live: Arc<LiveBoard>) -> EngineReadModel {
        EngineReadModel {
            pool,
            counters,
            live,
            params: None,
        }
    }
}

fn storage(e: sqlx::Error) -> ReadError {
    ReadError::Storage(e.to_string())
}

fn unsigned(v: i64) -> Result<u64, ReadError> {
    u64::try_from(v).map_err(|_| ReadError::Storage(format!("negative value {v} in store")))
}

impl ReadModel for EngineReadModel {
    fn intervals(&self, limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        Box::pin(async move {
            let rows: Vec<(i64, Option<i64>, i64, i64, i64)> = sqlx::query_as(
                "SELECT interval_start, clearing_price, volume_wh, trades, orders FROM intervals \
                 ORDER BY interval_start DESC LIMIT ?",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter()
                .map(|(start, price, volume, trades, orders)| {
                    Ok(IntervalRow {
                        interval_start: unsigned(start)?,
                        clearing_price: price.map(unsigned).transpose()?,
                        volume_wh: unsigned(volume)?,
                        trades: unsigned(trades)?,
                        orders: unsigned(orders)?,
                    })
                })
                .collect()
        })
    }

    fn settlements(&self, limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        Box::pin(async move {
            type Row = (i64, String, String, String, i64, i64, Option<String>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT s.interval_start, s.status, s.hash, s.prev_hash, s.households, \
                 COALESCE(r.traded_micros, 0), s.tx_hash \
                 FROM settlements s LEFT JOIN reconciliations r ON r.interval_start = s.interval_start \
                 ORDER BY s.interval_start DESC LIMIT ?",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter()
                .map(
                    |(start, status, hash, prev_hash, households, traded, tx_hash)| {
                        Ok(SettlementRow {
                            interval_start: unsigned(start)?,
                            status,
                            hash,
                            prev_hash,
                            households: unsigned(households)?,
                            traded_micros: traded,
                            tx_hash,
                        })
                    },
                )
                .collect()
        })
    }

    fn live(&self) -> Vec<LiveRow> {
        self.live.rows()
    }

    fn rejects(&self) -> Vec<(String, u64)> {
        self.counters.rejects()
    }

    fn meter_rejects(&self) -> Vec<MeterRejectRow> {
        self.counters
            .sender_rejects()
            .into_iter()
            .map(|(household, meter, reason, count)| MeterRejectRow {
                household,
                meter: (!meter.is_empty()).then_some(meter),
                reason,
                count,
            })
            .collect()
    }

    fn auction_params(&self) -> Option<ParamsRow> {
        self.params.as_ref().map(|p| ParamsRow::from(&*p.get()))
    }

    fn order_book(&self) -> ReadFuture<'_, Option<OrderBookRow>> {
        Box::pin(async move {
            // The earliest interval after the newest cleared one that has
            // orders: the book that gate closure will clear next.
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(interval_start) FROM orders WHERE interval_start > \
                 COALESCE((SELECT MAX(interval_start) FROM intervals), -1)",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(storage)?;
            let (start, cleared) = match open {
                Some(s) => (s, false),
                None => {
                    let last: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(interval_start) FROM intervals")
                            .fetch_one(&self.pool)
                            .await
                            .map_err(storage)?;
                    match last {
                        Some(s) => (s, true),
                        None => return Ok(None),
                    }
                }
            };
            let interval = IntervalId(unsigned(start)?);
            // The same book the auction clears: amendments applied.
            let orders = crate::book::load_orders(&self.pool, interval)
                .await
                .map_err(|e| ReadError::Storage(e.to_string()))?;
            let plain: Vec<protocol::Order> = orders.into_iter().map(|o| o.order).collect();
            let nonces: BTreeMap<String, u64> = plain.iter().map(|o| (o.id(), o.nonce)).collect();
            let book = crate::book::build_book(&plain);
            Ok(Some(OrderBookRow {
                interval_start: interval.0,
                cleared,
                orders: book
                    .into_iter()
                    .map(|o| BookOrderRow {
                        nonce: nonces.get(o.id.as_str()).copied().unwrap_or(0),
                        household: o.household.to_string(),
                        side: side_name(o.side).to_owned(),
                        quantity_wh: o.quantity_wh.0,
                        limit_price: o.limit_price.0,
                    })
                    .collect(),
            }))
        })
    }

    fn household_readings<'a>(
        &'a self,
        household: &'a str,
        limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdReadingRow>> {
        Box::pin(async move {
            type Row = (
                String,
                i64,
                i64,
                i64,
                i64,
                Option<i64>,
                i64,
                Option<i64>,
                String,
            );
            // Through `meters`, so that each meter's part is a range of the
            // (meter, ts) index.
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT meter, seq, ts, import_wh, export_wh, pv_wh, grid_power_w, pv_power_w, status \
                 FROM readings WHERE meter IN (SELECT meter FROM meters WHERE household = ?) \
                 ORDER BY ts DESC, meter LIMIT ?",
            )
            .bind(household)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter()
                .map(|(meter, seq, ts, imp, exp, pv, grid_w, pv_w, status)| {
                    Ok(HouseholdReadingRow {
                        meter,
                        seq: unsigned(seq)?,
                        ts: unsigned(ts)?,
                        import_wh: unsigned(imp)?,
                        export_wh: unsigned(exp)?,
                        pv_wh: pv.map(unsigned).transpose()?,
                        grid_power_w: grid_w,
                        pv_power_w: pv_w,
                        status,
                    })
                })
                .collect()
        })
    }

    fn household_orders<'a>(
        &'a self,
        household: &'a str,
        limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdOrderRow>> {
        Box::pin(async move {
            type Row = (i64, i64, String, i64, i64, Option<i64>, i64);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT nonce, interval_start, side, quantity_wh, limit_price, replaces, ts \
                 FROM orders WHERE household = ? ORDER BY nonce DESC LIMIT ?",
            )
            .bind(household)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter()
                .map(|(nonce, start, side, qty, price, replaces, ts)| {
                    Ok(HouseholdOrderRow {
                        nonce: unsigned(nonce)?,
                        interval_start: unsigned(start)?,
                        side,
                        quantity_wh: unsigned(qty)?,
                        limit_price: unsigned(price)?,
                        replaces: replaces.map(unsigned).transpose()?,
                        ts: unsigned(ts)?,
                    })
                })
                .collect()
        })
    }

    fn household_trades<'a>(
        &'a self,
        household: &'a str,
        limit: u32,
    ) -> ReadFuture<'a, Vec<TradeRow>> {
        Box::pin(async move {
            let rows: Vec<TradeTuple> = sqlx::query_as(
                "SELECT interval_start, idx, buyer, seller, quantity_wh, price, buyer_price FROM trades \
                 WHERE buyer = ?1 OR seller = ?1 ORDER BY interval_start DESC, idx LIMIT ?2",
            )
            .bind(household)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter().map(trade_row).collect()
        })
    }

    fn household_bills<'a>(
        &'a self,
        household: &'a str,
        limit: u32,
    ) -> ReadFuture<'a, Vec<BillRow>> {
        Box::pin(async move {
            type Row = (
                i64,
                i64,
                i64,
                i64,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
            );
            // The tariffs are the interval's own, from its signed result.
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT t.interval_start, t.amount, t.delivered_wh, t.received_wh, \
                 d.import_wh, d.export_wh, d.has_data, \
                 json_extract(i.result_json, '$.params.feed_in_tariff'), \
                 json_extract(i.result_json, '$.params.retail_tariff') \
                 FROM transfers t JOIN intervals i ON i.interval_start = t.interval_start \
                 LEFT JOIN deliveries d ON d.interval_start = t.interval_start AND d.household = t.household \
                 WHERE t.household = ? ORDER BY t.interval_start DESC LIMIT ?",
            )
            .bind(household)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            let defaults = protocol::AuctionParams::default();
            rows.into_iter()
                .map(
                    |(start, amount, delivered, received, imp, exp, has_data, feed_in, retail)| {
                        Ok(BillRow {
                            interval_start: unsigned(start)?,
                            amount,
                            delivered_wh: unsigned(delivered)?,
                            received_wh: unsigned(received)?,
                            import_wh: imp.map(unsigned).transpose()?.unwrap_or(0),
                            export_wh: exp.map(unsigned).transpose()?.unwrap_or(0),
                            has_data: has_data.is_some_and(|v| v != 0),
                            feed_in_tariff: feed_in
                                .map(unsigned)
                                .transpose()?
                                .unwrap_or(defaults.feed_in_tariff.0),
                            retail_tariff: retail
                                .map(unsigned)
                                .transpose()?
                                .unwrap_or(defaults.retail_tariff.0),
                        })
                    },
                )
                .collect()
        })
    }

    fn devices(&self) -> ReadFuture<'_, Vec<DeviceRow>> {
        Box::pin(async move {
            type Row = (
                String,
                String,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<String>,
            );
            // Each meter's newest reading is the last row of its primary key
            // range (meter, seq): one index seek per meter.
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT m.meter, m.household, r.seq, r.ts, r.received_at, r.status FROM meters m \
                 LEFT JOIN readings r ON r.meter = m.meter AND r.seq = \
                 (SELECT MAX(seq) FROM readings WHERE meter = m.meter) ORDER BY m.meter",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            rows.into_iter()
                .map(|(meter, household, seq, ts, received, status)| {
                    Ok(DeviceRow {
                        meter,
                        household,
                        last_seq: seq.map(unsigned).transpose()?,
                        last_ts: ts.map(unsigned).transpose()?,
                        last_received_at: received.map(unsigned).transpose()?,
                        last_status: status,
                    })
                })
                .collect()
        })
    }

    fn households(&self) -> ReadFuture<'_, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT household FROM households ORDER BY household")
                .fetch_all(&self.pool)
                .await
                .map_err(storage)
        })
    }

    fn interval_detail(&self, interval_start: u64) -> ReadFuture<'_, Option<IntervalDetailRow>> {
        Box::pin(async move {
            let Ok(start) = i64::try_from(interval_start) else {
                return Ok(None);
            };
            type Head = (i64, Option<i64>, i64, i64, i64, String, String, i64);
            let head: Option<Head> = sqlx::query_as(
                "SELECT interval_start, clearing_price, volume_wh, trades, orders, orders_root, trades_root, cleared_at \
                 FROM intervals WHERE interval_start = ?",
            )
            .bind(start)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
            let Some((_, price, volume, trades_n, orders_n, orders_root, trades_root, cleared_at)) =
                head
            else {
                return Ok(None);
            };
            let trades: Vec<TradeTuple> = sqlx::query_as(
                "SELECT interval_start, idx, buyer, seller, quantity_wh, price, buyer_price FROM trades \
                 WHERE interval_start = ? ORDER BY idx",
            )
            .bind(start)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            type Batch = (String, String, String, String, i64, i64, Option<String>);
            let batch: Option<Batch> = sqlx::query_as(
                "SELECT status, hash, prev_hash, batch_json, utility_micros, confirmations, tx_hash \
                 FROM settlements WHERE interval_start = ?",
            )
            .bind(start)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
            let settlement = match batch {
                None => None,
                Some((status, hash, prev_hash, json, utility, confirmations, tx_hash)) => {
                    let parsed: SettlementBatch = serde_json::from_str(&json).map_err(|e| {
                        ReadError::Storage(format!("batch of interval {start}: {e}"))
                    })?;
                    Some(SettlementDetailRow {
                        status,
                        hash,
                        prev_hash,
                        readings_root: parsed.readings_root.to_hex(),
                        utility_micros: utility,
                        confirmations: unsigned(confirmations)?,
                        tx_hash,
                        transfers: parsed
                            .transfers
                            .into_iter()
                            .map(|t| TransferRow {
                                household: t.household.to_string(),
                                amount: t.amount.0,
                                delivered_wh: t.delivered_wh.0,
                                received_wh: t.received_wh.0,
                            })
                            .collect(),
                    })
                }
            };
            Ok(Some(IntervalDetailRow {
                interval: IntervalRow {
                    interval_start,
                    clearing_price: price.map(unsigned).transpose()?,
                    volume_wh: unsigned(volume)?,
                    trades: unsigned(trades_n)?,
                    orders: unsigned(orders_n)?,
                },
                orders_root,
                trades_root,
                cleared_at: unsigned(cleared_at)?,
                trades: trades
                    .into_iter()
                    .map(trade_row)
                    .collect::<Result<_, _>>()?,
                settlement,
            }))
        })
    }

    fn verify_interval(&self, interval_start: u64) -> ReadFuture<'_, Option<VerifyReport>> {
        Box::pin(async move { verify(&self.pool, interval_start).await })
    }

    fn published(
        &self,
        interval_start: u64,
        interval_ms: u64,
    ) -> ReadFuture<'_, Option<crate::read::PublishedInterval>> {
        Box::pin(async move {
            // An interval whose end does not fit the database's integers was
            // never cleared (and must not reach a query as a bad bind).
            let fits = interval_start
                .checked_add(interval_ms)
                .is_some_and(|end| i64::try_from(end).is_ok());
            if !fits {
                return Ok(None);
            }
            crate::evm::verify::published(
                &self.pool,
                protocol::IntervalId(interval_start),
                interval_ms,
            )
            .await
            .map_err(|e| ReadError::Storage(e.to_string()))
        })
    }
}

type TradeTuple = (i64, i64, String, String, i64, i64, i64);

fn trade_row(
    (start, idx, buyer, seller, qty, price, buyer_price): TradeTuple,
) -> Result<TradeRow, ReadError> {
    Ok(TradeRow {
        interval_start: unsigned(start)?,
        idx: unsigned(idx)?,
        buyer,
        seller,
        quantity_wh: unsigned(qty)?,
        price: unsigned(price)?,
        buyer_price: unsigned(buyer_price)?,
    })
}

fn side_name(side: protocol::Side) -> &'static str {
    match side {
        protocol::Side::Buy => "buy",
        protocol::Side::Sell => "sell",
    }
}

fn price_text(p: Option<protocol::MicroPerKwh>) -> String {
    p.map_or_else(|| "no price".to_owned(), |p| format!("{} µ/kWh", p.0))
}

/// Collects the checks of one verification.
struct Checks(Vec<VerifyCheck>);

impl Checks {
    fn add(&mut self, name: &str, ok: bool, detail: String) {
        self.0.push(VerifyCheck {
            name: name.to_owned(),
            ok,
            detail,
        });
    }
}

fn key_from(bytes: &[u8]) -> Option<VerifyingKey> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&arr).ok()
}

/// Re-verifies one interval from the database alone: everything a member of
/// the community could check with the published signed messages.
async fn verify(pool: &SqlitePool, interval_start: u64) -> Result<Option<VerifyReport>, ReadError> {
    // Beyond the store's integer range nothing can be stored: not found,
    // rather than a storage error.
    if i64::try_from(interval_start).is_err() {
        return Ok(None);
    }
    let interval = IntervalId(interval_start);
    let Some(stored) = crate::book::stored_result(pool, interval)
        .await
        .map_err(|e| ReadError::Storage(e.to_string()))?
    else {
        return Ok(None);
    };
    let start = i64::try_from(interval_start)
        .map_err(|_| ReadError::Storage("interval out of range".into()))?;
    let engine_keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, public_key FROM engine_keys")
            .fetch_all(pool)
            .await
            .map_err(storage)?;
    let engine_key = |id: &str| {
        engine_keys
            .iter()
            .find(|(k, _)| k == id)
            .and_then(|(_, b)| key_from(b))
    };
    let mut checks = Checks(Vec::new());

    // 1. Every order's signature under its household's enrolled key.
    let orders = crate::book::load_orders(pool, interval)
        .await
        .map_err(|e| ReadError::Storage(e.to_string()))?;
    let household_keys: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, household, public_key FROM keys")
            .fetch_all(pool)
            .await
            .map_err(storage)?;
    let mut bad_orders = Vec::new();
    for o in &orders {
        let ok = SignedEnvelope::decode(&o.envelope).ok().is_some_and(|env| {
            household_keys
                .iter()
                .find(|(id, h, _)| *id == env.key_id.0 && h == o.order.household.as_str())
                .and_then(|(_, _, b)| key_from(b))
                .is_some_and(|k| env.verify(Domain::Order, &k).is_ok())
        });
        if !ok {
            bad_orders.push(o.order.id());
        }
    }
    checks.add(
        "order_signatures",
        bad_orders.is_empty(),
        if bad_orders.is_empty() {
            format!(
                "{} signed orders verify under their households' keys",
                orders.len()
            )
        } else {
            format!("orders that do not verify: {}", bad_orders.join(", "))
        },
    );

    // 2. The auction re-run on those orders gives the stored result.
    let (rerun, _) = crate::book::result_of(
        &stored.result.grid,
        interval,
        &stored.result.params,
        &orders,
    );
    checks.add(
        "orders_root",
        rerun.orders_root == stored.result.orders_root,
        format!(
            "recomputed {} / published {}",
            rerun.orders_root.to_hex(),
            stored.result.orders_root.to_hex()
        ),
    );
    checks.add(
        "auction_rerun",
        rerun == stored.result,
        format!(
            "re-running the auction gives {} trades, {} Wh at {}; published {} trades, {} Wh at {}",
            rerun.trades.len(),
            rerun.volume_wh.0,
            price_text(rerun.clearing_price),
            stored.result.trades.len(),
            stored.result.volume_wh.0,
            price_text(stored.result.clearing_price)
        ),
    );
    checks.add(
        "trades_root",
        rerun.trades_root == stored.result.trades_root,
        format!(
            "recomputed {} / published {}",
            rerun.trades_root.to_hex(),
            stored.result.trades_root.to_hex()
        ),
    );

    // 3. The engine's signature on the published result.
    let result_ok = SignedEnvelope::decode_for(Domain::Result, &stored.envelope)
        .ok()
        .is_some_and(|env| {
            engine_key(&env.key_id.0).is_some_and(|k| env.verify(Domain::Result, &k).is_ok())
                && protocol::decode_payload::<ClearingResult>(&env.payload)
                    .is_ok_and(|r| r == stored.result)
        });
    checks.add(
        "result_signature",
        result_ok,
        "the published result is signed by an engine key and matches the stored result".into(),
    );

    // 4. The settlement batch, when there is one.
    let batch: Option<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT hash, batch_json, signature FROM settlements WHERE interval_start = ?",
    )
    .bind(start)
    .fetch_optional(pool)
    .await
    .map_err(storage)?;
    match batch {
        None => checks.add(
            "settlement",
            true,
            "not settled yet: nothing to check".into(),
        ),
        Some((hash, json, signature)) => {
            let parsed: Option<SettlementBatch> = serde_json::from_str(&json).ok();
            let hash_ok = parsed
                .as_ref()
                .is_some_and(|b| b.hash().to_hex() == hash && canonical_json(b) == json.as_bytes());
            checks.add(
                "batch_hash",
                hash_ok,
                format!("the batch's SHA-256 is the recorded hash {hash}"),
            );
            let roots_ok = parsed.as_ref().is_some_and(|b| {
                b.orders_root == stored.result.orders_root
                    && b.trades_root == stored.result.trades_root
            });
            checks.add(
                "batch_roots",
                roots_ok,
                "the batch commits to the interval's orders and trades roots".into(),
            );
            checks.add(
                "batch_balances",
                parsed.as_ref().is_some_and(SettlementBatch::balances),
                "transfers and the utility's share sum to zero".into(),
            );
            let sig_ok = SignedEnvelope::decode_for(Domain::Batch, &signature)
                .ok()
                .is_some_and(|env| {
                    env.payload == json.as_bytes()
                        && engine_key(&env.key_id.0)
                            .is_some_and(|k| env.verify(Domain::Batch, &k).is_ok())
                });
            checks.add(
                "batch_signature",
                sig_ok,
                "the batch is signed by an engine key".into(),
            );
        }
    }
    let ok = checks.0.iter().all(|c| c.ok);
    Ok(Some(VerifyReport {
        interval_start,
        ok,
        checks: checks.0,
    }))
}
