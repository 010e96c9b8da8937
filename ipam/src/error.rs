//! weft-ipam's errors: what went wrong, said where it happens; which CNI code that is, decided
//! here and nowhere else.

use conf::code;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A config that can never work as written (a bad range, an unknown key value, a static
    /// address outside every range, etcd keys that conflict with this config).
    #[error("{0}")]
    Config(String),
    /// Something the runtime's environment got wrong (the node name).
    #[error("{0}")]
    Env(String),
    /// What was asked for is held by someone else right now and may be free later (a static
    /// address another container holds, a block another node holds, a busy claim lock).
    #[error("{0}")]
    Busy(String),
    /// No free address (or block) is left for the request.
    #[error("{0}")]
    Exhausted(String),
    /// etcd did not answer within the bound, or failed in a way a retry may fix.
    #[error("{0}")]
    EtcdUnavailable(String),
    /// etcd answered and refused (authentication, permission, an invalid request).
    #[error("etcd refused the request: {0}")]
    EtcdRefused(String),
    /// State on disk is not what weft-ipam writes (truncated, edited, foreign).
    #[error("{0}")]
    Corrupt(String),
    /// Reading or writing the store failed.
    #[error("{0}")]
    Io(String),
    /// CHECK found the reservations differ from what the runtime believes.
    #[error("{0}")]
    CheckFailed(String),
    /// STATUS: the store cannot serve ADDs now.
    #[error("weft-ipam store not available: {0}")]
    NotAvailable(String),
    /// A bug or an environment we cannot run in (no tokio runtime).
    #[error("{0}")]
    Internal(String),
    /// From `conf`'s validators (they carry their code).
    #[error(transparent)]
    Cni(#[from] conf::Error),
    /// From `host` (it maps its own errors to codes).
    #[error(transparent)]
    Host(#[from] host::HostError),
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

impl IpamError {
    /// The CNI error code of this error: the one place weft-ipam decides codes.
    pub fn code(&self) -> u32 {
        match self {
            IpamError::Config(_) => code::INVALID_CONFIG,
            IpamError::Env(_) => code::INVALID_ENV,
            IpamError::Busy(_) | IpamError::EtcdUnavailable(_) => code::TRY_AGAIN,
            IpamError::Exhausted(_) => code::POOL_EXHAUSTED,
            IpamError::EtcdRefused(_) | IpamError::Io(_) => code::IO,
            IpamError::Corrupt(_) => code::STATE,
            IpamError::CheckFailed(_) => code::CHECK_FAILED,
            IpamError::NotAvailable(_) => code::NOT_AVAILABLE,
            IpamError::Internal(_) => code::INTERNAL,
            IpamError::Cni(e) => e.code,
            IpamError::Host(e) => e.code(),
        }
    }

    /// STATUS wraps whatever made the store unusable into code 50, keeping the reason.
    pub fn not_available(self) -> IpamError {
        match self {
            e @ IpamError::NotAvailable(_) => e,
            e => IpamError::NotAvailable(e.to_string()),
        }
    }
}

impl From<IpamError> for conf::Error {
    fn from(e: IpamError) -> conf::Error {
        match e {
            IpamError::Cni(e) => e,
            IpamError::Host(e) => e.into(),
            e => conf::Error::new(e.code(), e.to_string()),
        }
    }
}
