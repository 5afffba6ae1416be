//! Home Assistant MQTT discovery: the household's power, energy, current
//! price and today's bill appear in Home Assistant without configuration.
//!
//! Home Assistant listens on `{prefix}/sensor/{object_id}/config` for retained
//! JSON that describes a sensor; the sensor then reads its value from a state
//! topic. All four sensors share one state topic with one JSON document, so
//! one publish updates them together, and one availability topic with a last
//! will, so Home Assistant greys them out when the gateway goes away.
//!
//! The messages are built by pure functions ([`discovery_messages`],
//! [`state_payload`]); [`run_home_assistant`] only publishes them on Home
//! Assistant's broker (normally its local Mosquitto, not the community one).
//! Money is converted from integer micro-units to currency units only here,
//! for display: Home Assistant wants a decimal number.

use crate::config::HomeAssistantRole;
use crate::household::ControllerStats;
use protocol::{Clock, GridId, HouseholdId, Reading};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The topics Home Assistant is told to read, for one household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaTopics {
    pub state: String,
    pub availability: String,
}

/// The state and availability topics of `household`.
pub fn topics(grid: &GridId, household: &HouseholdId) -> HaTopics {
    HaTopics {
        state: format!("voltshare/{grid}/ha/{household}/state"),
        availability: format!("voltshare/{grid}/ha/{household}/availability"),
    }
}

/// The retained discovery messages `(topic, JSON)` for one household:
/// grid power (W), imported and exported energy (kWh), the current clearing
/// price (currency/kWh) and today's bill (currency).
pub fn discovery_messages(
    prefix: &str,
    grid: &GridId,
    household: &HouseholdId,
    currency: &str,
) -> Vec<(String, Value)> {
    let t = topics(grid, household);
    let node = format!("voltshare_{grid}_{household}").replace('-', "_");
    let device = json!({
        "identifiers": [node],
        "name": format!("Voltshare {household}"),
        "manufacturer": "Voltshare",
        "model": "Household gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    // (object, name, unit, device_class, state_class, value key)
    type Sensor<'a> = (&'a str, &'a str, String, &'a str, Option<&'a str>, &'a str);
    let sensors: [Sensor<'_>; 6] = [
        (
            "power",
            "Grid power",
            "W".into(),
            "power",
            Some("measurement"),
            "power_w",
        ),
        (
            "pv_power",
            "PV power",
            "W".into(),
            "power",
            Some("measurement"),
            "pv_power_w",
        ),
        (
            "import",
            "Energy imported",
            "kWh".into(),
            "energy",
            Some("total_increasing"),
            "import_kwh",
        ),
        (
            "export",
            "Energy exported",
            "kWh".into(),
            "energy",
            Some("total_increasing"),
            "export_kwh",
        ),
        (
            "price",
            "Current price",
            format!("{currency}/kWh"),
            "monetary",
            None,
            "price",
        ),
        (
            "bill_today",
            "Today's bill",
            currency.to_owned(),
            "monetary",
            Some("total"),
            "bill_today",
        ),
    ];
    sensors
        .into_iter()
        .map(|(object, name, unit, class, state_class, key)| {
            let mut config = json!({
                "name": name,
                "unique_id": format!("{node}_{object}"),
                "object_id": format!("{node}_{object}"),
                "state_topic": t.state,
                "value_template": format!("{{{{ value_json.{key} }}}}"),
                "unit_of_measurement": unit,
                "device_class": class,
                "availability_topic": t.availability,
                "device": device,
            });
            if let (Some(sc), Some(obj)) = (state_class, config.as_object_mut()) {
                obj.insert("state_class".into(), json!(sc));
            }
            (format!("{prefix}/sensor/{node}/{object}/config"), config)
        })
        .collect()
}

/// Micro-units as a decimal number of currency units (display only).
fn units(micros: i64, scale: i64) -> f64 {
    micros as f64 / scale as f64
}

/// The state document for the sensors of [`discovery_messages`].
pub fn state_payload(
    reading: Option<&Reading>,
    last_price_micro_per_kwh: u64,
    bill_today_micros: i64,
) -> Value {
    let mut v = json!({
        // Price per kWh in currency units: µ/kWh ÷ 10⁶.
        "price": units(i64::try_from(last_price_micro_per_kwh).unwrap_or(i64::MAX), 1_000_000),
        "bill_today": units(bill_today_micros, 1_000_000),
    });
    if let (Some(r), Some(obj)) = (reading, v.as_object_mut()) {
        obj.insert("power_w".into(), json!(r.grid_power_w.0));
        obj.insert("pv_power_w".into(), json!(r.pv_power_w.map_or(0, |w| w.0)));
        obj.insert("import_kwh".into(), json!(r.import_wh.0 as f64 / 1000.0));
        obj.insert("export_kwh".into(), json!(r.export_wh.0 as f64 / 1000.0));
    }
    v
}

/// Publishes discovery (on every connect: Home Assistant may have restarted
/// without retained messages) and then the state every `publish_every_ms`,
/// until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run_home_assistant(
    role: HomeAssistantRole,
    grid: GridId,
    household: HouseholdId,
    clock: Arc<dyn Clock>,
    readings: watch::Receiver<Option<Reading>>,
    stats: Arc<ControllerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let t = topics(&grid, &household);
    let mut opts = MqttOptions::new(format!("vs-ha-{grid}-{household}"), &role.host, role.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(LastWill::new(
        &t.availability,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Err(e) = role.security.apply(&mut opts) {
        warn!(error = %e, "Home Assistant broker settings unusable; discovery not started");
        return;
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 32);
    let discovery = discovery_messages(&role.discovery_prefix, &grid, &household, "EUR");
    let every = clock.real_duration(role.publish_every_ms);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.publish(&t.availability, QoS::AtLeastOnce, true, "offline").await;
                let _ = tokio::time::timeout(Duration::from_secs(1), async { while eventloop.poll().await.is_ok() {} }).await;
                let _ = client.disconnect().await;
                return;
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for (topic, config) in &discovery {
                        let _ = client.try_publish(topic, QoS::AtLeastOnce, true, config.to_string());
                    }
                    let _ = client.try_publish(&t.availability, QoS::AtLeastOnce, true, "online");
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "Home Assistant broker connection error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tick.tick() => {
                let r = readings.borrow().clone();
                let state = state_payload(
                    r.as_ref(),
                    stats.last_price.load(Ordering::Relaxed),
                    stats.bill_today_micros.load(Ordering::Relaxed),
                );
                let _ = client.try_publish(&t.state, QoS::AtMostOnce, false, state.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{DeviceStatus, MeterId, UnixMs, WattHours, Watts};

    #[test]
    fn discovery_describes_four_quantities() {
        let grid = GridId::new("lindenweg").expect("id");
        let h = HouseholdId::new("h07").expect("id");
        let msgs = discovery_messages("homeassistant", &grid, &h, "EUR");
        let by_topic: std::collections::BTreeMap<_, _> = msgs.iter().cloned().collect();
        let power = &by_topic["homeassistant/sensor/voltshare_lindenweg_h07/power/config"];
        assert_eq!(power["device_class"], "power");
        assert_eq!(power["unit_of_measurement"], "W");
        assert_eq!(power["state_topic"], "voltshare/lindenweg/ha/h07/state");
        assert_eq!(power["value_template"], "{{ value_json.power_w }}");
        let energy = &by_topic["homeassistant/sensor/voltshare_lindenweg_h07/import/config"];
        assert_eq!(energy["state_class"], "total_increasing");
        assert_eq!(energy["unit_of_measurement"], "kWh");
        let price = &by_topic["homeassistant/sensor/voltshare_lindenweg_h07/price/config"];
        assert_eq!(price["unit_of_measurement"], "EUR/kWh");
        assert!(
            price.get("state_class").is_none(),
            "a price is not a measurement HA may sum"
        );
        let bill = &by_topic["homeassistant/sensor/voltshare_lindenweg_h07/bill_today/config"];
        assert_eq!(bill["device_class"], "monetary");
        // Unique ids are unique.
        let ids: std::collections::BTreeSet<_> = msgs
            .iter()
            .map(|(_, c)| c["unique_id"].to_string())
            .collect();
        assert_eq!(ids.len(), msgs.len());
    }

    #[test]
    fn state_converts_units() {
        let r = Reading {
            grid: GridId::new("g").expect("id"),
            household: HouseholdId::new("h").expect("id"),
            meter: MeterId::new("m").expect("id"),
            seq: 1,
            ts: UnixMs(0),
            import_wh: WattHours(12_345),
            export_wh: WattHours(500),
            pv_wh: Some(WattHours(1)),
            grid_power_w: Watts(-1500),
            pv_power_w: Some(Watts(2000)),
            status: DeviceStatus::Ok,
        };
        let s = state_payload(Some(&r), 215_000, -1_234_567);
        assert_eq!(s["power_w"], -1500);
        assert_eq!(s["import_kwh"], 12.345);
        assert_eq!(s["price"], 0.215);
        assert_eq!(s["bill_today"], -1.234567);
        let s = state_payload(None, 0, 0);
        assert!(s.get("power_w").is_none());
    }
}
