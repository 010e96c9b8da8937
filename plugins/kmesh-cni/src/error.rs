//! kmesh-cni's errors: what went wrong, said where it happens; which CNI code that is, decided
//! here and nowhere else.

use conf::code;

#[derive(Debug, thiserror::Error)]
pub enum KmeshError {
    /// The config can never work as written (no prevResult in a chain, an invalid key value).
    #[error("{0}")]
    Config(String),
    /// The runtime's environment lacks something this verb needs.
    #[error("{0}")]
    Env(String),
    /// The kernel cannot do what the configured mode needs.
    #[error("kernel lacks {0} for the kmesh-cni fast path")]
    KernelLacks(&'static str),
    /// A BPF operation failed; `context` says which.
    #[error("{context}: {source}")]
    Bpf {
        context: &'static str,
        source: bpf::Error,
    },
    /// The pod's links are not what the main plugin's result said.
    #[error("{0}")]
    Link(String),
    /// CHECK: the attachment differs from the record and prevResult.
    #[error("{msg}")]
    CheckFailed { msg: String, details: String },
    /// GC: some stale attachments could not be removed (details name them).
    #[error("GC could not remove every stale attachment")]
    GcIncomplete { details: String },
    /// STATUS: the node cannot serve the fast path now.
    #[error("{0}")]
    NotAvailable(String),
    #[error(transparent)]
    Cni(#[from] conf::Error),
    #[error(transparent)]
    Host(#[from] host::HostError),
}

pub type Result<T, E = KmeshError> = std::result::Result<T, E>;

impl KmeshError {
    /// A BPF failure, named by what was being done (`map_err(bpf("attach"))`).
    pub fn bpf(context: &'static str) -> impl FnOnce(bpf::Error) -> KmeshError {
        move |source| KmeshError::Bpf { context, source }
    }

    /// The CNI error code: the one place kmesh-cni decides codes.
    pub fn code(&self) -> u32 {
        match self {
            KmeshError::Config(_) => code::INVALID_CONFIG,
            KmeshError::Env(_) => code::INVALID_ENV,
            KmeshError::KernelLacks(_) | KmeshError::Link(_) | KmeshError::GcIncomplete { .. } => {
                code::HOST
            }
            KmeshError::Bpf { source, .. } => match source {
                // Pin keys come from CNI_CONTAINERID / CNI_IFNAME.
                bpf::Error::InvalidKey { .. } => code::INVALID_ENV,
                // Pins of a layout this build does not know: state, not the host.
                bpf::Error::StaleMap { .. } => code::STATE,
                _ => code::HOST,
            },
            KmeshError::CheckFailed { .. } => code::CHECK_FAILED,
            KmeshError::NotAvailable(_) => code::NOT_AVAILABLE,
            KmeshError::Cni(e) => e.code,
            KmeshError::Host(e) => e.code(),
        }
    }

    /// STATUS turns whatever makes the node unable to attach into code 50, keeping the reason.
    pub fn not_available(self) -> KmeshError {
        match self {
            e @ KmeshError::NotAvailable(_) => e,
            e => KmeshError::NotAvailable(e.to_string()),
        }
    }
}

impl From<KmeshError> for conf::Error {
    fn from(e: KmeshError) -> conf::Error {
        let code = e.code();
        match e {
            KmeshError::Cni(e) => e,
            KmeshError::Host(e) => e.into(),
            KmeshError::CheckFailed { msg, details } => {
                conf::Error::new(code, msg).with_details(details)
            }
            KmeshError::GcIncomplete { ref details } => {
                let details = details.clone();
                conf::Error::new(code, e.to_string()).with_details(details)
            }
            e => conf::Error::new(code, e.to_string()),
        }
    }
}
