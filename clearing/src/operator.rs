//! What the dashboard's operator may change in the engine: enrol a
//! household from its signed request, and change the auction parameters.
//!
//! This is the dashboard's only way to write to the engine. Like
//! [`crate::read::ReadModel`] it is an object-safe trait, held by the web as
//! `Arc<dyn Operator>` and implemented by the running engine
//! ([`crate::EngineHandle::operator`]), so the web crate's tests can use a
//! fake. The engine side runs the same code as `voltshare clearing approve`
//! ([`crate::enrol`]) and reloads its registry at once, so an approved
//! household's messages are accepted without a restart; parameter changes go
//! through [`crate::params`] (validated, audited, applied from the next
//! interval still open).

use crate::read::{ParamChangeRow, ParamSetRow};
use serde::Serialize;

/// Why an operator action was refused. `Invalid` and `Conflict` carry a
/// message meant for the operator; `Storage` only for logs.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The input is wrong; `field` names what.
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    /// The input is fine but the engine's state refuses it (e.g. the
    /// household is already enrolled, a meter belongs to another).
    #[error("{0}")]
    Conflict(String),
    #[error("engine storage: {0}")]
    Storage(String),
}

/// A future returned by [`Operator`] (boxed: the trait is object-safe).
pub type OpFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, OperatorError>>;

/// A verified enrolment request, as the operator sees it before and after
/// approving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrolmentSummary {
    pub grid: String,
    pub household: String,
    /// Hex ed25519 public key the request enrols (and is signed by).
    pub public_key: String,
    pub key_id: String,
    pub meters: Vec<String>,
}

/// The operator's write access to the engine.
pub trait Operator: Send + Sync + 'static {
    /// Checks a request file (`{"envelope": hex}` as `voltshare enroll`
    /// writes it) without storing anything: the signature by the key it
    /// enrols, the payload and the grid.
    fn check_enrolment(&self, request_file: &str) -> Result<EnrolmentSummary, OperatorError>;
    /// Verifies the request again and enrols the household in the engine's
    /// registry; its messages are accepted from the next intake batch on.
    fn approve_enrolment<'a>(&'a self, request_file: &'a str) -> OpFuture<'a, EnrolmentSummary>;
    /// Validates, stores (with `by` in the audit record) and applies a
    /// parameter change from the next interval whose gate is still open.
    fn change_params<'a>(
        &'a self,
        update: ParamSetRow,
        by: &'a str,
    ) -> OpFuture<'a, ParamChangeRow>;
}

impl From<crate::enrol::EnrolError> for OperatorError {
    fn from(e: crate::enrol::EnrolError) -> Self {
        use crate::enrol::EnrolError as E;
        match e {
            E::Field { field, why } => OperatorError::Invalid {
                field: format!("request field `{field}`"),
                why,
            },
            E::File(_) | E::Envelope(_) | E::WrongSigner { .. } | E::WrongGrid { .. } => {
                OperatorError::Invalid {
                    field: "request".into(),
                    why: e.to_string(),
                }
            }
            E::HouseholdExists(_)
            | E::NoSuchHousehold(_)
            | E::KeyExists(_)
            | E::NoSuchKey(_)
            | E::MeterTaken { .. } => OperatorError::Conflict(e.to_string()),
            E::Store(s) => OperatorError::Storage(s.to_string()),
        }
    }
}

impl From<crate::params::ParamsError> for OperatorError {
    fn from(e: crate::params::ParamsError) -> Self {
        OperatorError::Invalid {
            field: e.field.to_owned(),
            why: e.why,
        }
    }
}

impl From<crate::enrol::VerifiedRequest> for EnrolmentSummary {
    fn from(v: crate::enrol::VerifiedRequest) -> Self {
        EnrolmentSummary {
            grid: v.request.grid.to_string(),
            household: v.request.household.to_string(),
            public_key: v.request.public_key.clone(),
            key_id: v.key_id.0.clone(),
            meters: v.request.meters.iter().map(|m| m.to_string()).collect(),
        }
    }
}
