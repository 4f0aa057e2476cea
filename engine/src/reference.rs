//! Image references: the shared `orca-registry` parser (Docker's
//! normalization and error wording), and the mapping of registry errors to
//! Docker API statuses.

pub use orca_registry::reference::{familiar, registry_domain, Reference, DEFAULT_DOMAIN};

use crate::error::EngineError;

impl From<orca_registry::Error> for EngineError {
    fn from(e: orca_registry::Error) -> Self {
        use orca_registry::Error as R;
        match e {
            R::InvalidReference(m) | R::InvalidArgument(m) => EngineError::BadRequest(m),
            R::NotFound(m) => EngineError::NotFound(m),
            R::NoMatchingPlatform(_) => EngineError::NotFound(e.to_string()),
            R::Unsupported(m) => EngineError::NotImplemented(m),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_registry_errors() {
        let e: EngineError = Reference::parse("a b").unwrap_err().into();
        assert!(matches!(e, EngineError::BadRequest(ref m) if m == "invalid reference format"));
        let e: EngineError = orca_registry::Error::NotFound("x".into()).into();
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        let e: EngineError = orca_registry::Error::Registry {
            status: 500,
            message: "boom".into(),
        }
        .into();
        assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            familiar(&Reference::parse("busybox").unwrap().full()),
            "busybox:latest"
        );
    }
}
