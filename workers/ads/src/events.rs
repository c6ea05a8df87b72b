//! Impressions and clicks as Analytics Engine data points, one per event,
//! behind a seam: production writes to the `AD_EVENTS` dataset; the local
//! stacks (where Analytics Engine writes go nowhere) set
//! `ADS_EVENT_RECORDER=on` and the points are buffered in the isolate and
//! flushed to the [`RecorderObject`](crate::objects::RecorderObject) by the
//! background sync, where `GET /_test/events` reads them.
//!
//! Layout: index 1 = campaign id (sampling key); blobs = event, campaign,
//! creative, placement, species, breed, age_months, interests (comma
//! separated), region, user, impression id; doubles = price in micro-units
//! (per mille or per click), charge in micro-units, billed (1/0).

use serde::Serialize;

use crate::token::Dna;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Impression,
    Click,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataPoint {
    pub indexes: Vec<String>,
    pub blobs: Vec<String>,
    pub doubles: Vec<f64>,
}

pub struct Event<'a> {
    pub kind: Kind,
    pub campaign_id: &'a str,
    pub creative_id: &'a str,
    pub placement: &'a str,
    pub user: &'a str,
    pub impression_id: &'a str,
    pub dna: &'a Dna,
    pub price_micros: i64,
    pub charge_micros: i64,
    pub billed: bool,
}

impl Event<'_> {
    pub fn point(&self) -> DataPoint {
        let d = self.dna;
        DataPoint {
            indexes: vec![self.campaign_id.to_string()],
            blobs: vec![
                match self.kind {
                    Kind::Impression => "impression".into(),
                    Kind::Click => "click".into(),
                },
                self.campaign_id.to_string(),
                self.creative_id.to_string(),
                self.placement.to_string(),
                d.species.clone().unwrap_or_default(),
                d.breed.clone().unwrap_or_default(),
                d.age_months.map(|a| a.to_string()).unwrap_or_default(),
                d.interests.join(","),
                d.region.clone().unwrap_or_default(),
                self.user.to_string(),
                self.impression_id.to_string(),
            ],
            doubles: vec![self.price_micros as f64, self.charge_micros as f64, if self.billed { 1.0 } else { 0.0 }],
        }
    }
}

/// Where data points go.
pub enum Sink {
    Analytics(worker::AnalyticsEngineDataset),
    /// Buffered in the isolate; the background sync flushes them.
    Recorder,
    /// No dataset bound: points are dropped (logged once per isolate).
    Discard,
}

impl Sink {
    pub fn from_env(env: &worker::Env) -> Sink {
        Sink::new(env, worker_common::route::config(env, "ADS_EVENT_RECORDER").as_deref() == Some("on"))
    }

    /// `recorder`: whether `ADS_EVENT_RECORDER` is `on` (read once per
    /// isolate by the caller).
    pub fn new(env: &worker::Env, recorder: bool) -> Sink {
        if recorder {
            return Sink::Recorder;
        }
        match env.analytics_engine("AD_EVENTS") {
            Ok(ds) => Sink::Analytics(ds),
            Err(_) => Sink::Discard,
        }
    }

    pub fn write(&self, point: DataPoint) {
        match self {
            Sink::Analytics(ds) => {
                let builder = worker::AnalyticsEngineDataPointBuilder::new()
                    .indexes(point.indexes.iter().map(String::as_str).collect::<Vec<_>>())
                    .blobs(point.blobs)
                    .doubles(point.doubles);
                if let Err(e) = builder.write_to(ds) {
                    worker_common::log::event(
                        worker_common::log::Level::Warn,
                        crate::SERVICE,
                        "analytics write failed",
                        serde_json::json!({ "error": e.to_string() }),
                    );
                }
            }
            Sink::Recorder => crate::state::with(|s| s.pending_points.push(point)),
            Sink::Discard => {}
        }
    }
}
