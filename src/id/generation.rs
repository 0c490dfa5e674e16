use std::fmt;

use uuid::Uuid;

use crate::GatewayError;

/// The id of one produced image, as listed in `picklyone_generation_ids`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GenerationId(Uuid);

impl GenerationId {
    /// A fresh id, time-ordered like a hold's (a UUIDv7: 48 bits of time in ms, 74
    /// random), so the records' primary key takes a batch of inserts on its last pages.
    /// It is no capability: a generation is only ever served to its owner.
    pub fn new() -> Self {
        GenerationId(Uuid::now_v7())
    }

    /// Parses the hyphenated form (`a1b2c3d4-5678-90ab-cdef-1234567890ab`), any case.
    /// Anything else is `400 invalid_generation_id`.
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let hyphenated = raw.len() == 36 && raw.as_bytes().get(8) == Some(&b'-');
        match Uuid::try_parse(raw) {
            Ok(id) if hyphenated => Ok(GenerationId(id)),
            _ => Err(GatewayError::InvalidGenerationId),
        }
    }

    /// The id a stored row keeps.
    #[cfg(feature = "postgres")]
    pub(crate) fn from_uuid(id: Uuid) -> Self {
        GenerationId(id)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for GenerationId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for GenerationId {
    fn from(id: Uuid) -> Self {
        GenerationId(id)
    }
}

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.as_hyphenated(), f)
    }
}

impl fmt::Debug for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenerationId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hyphenated_form() {
        let id = GenerationId::parse("A1B2C3D4-5678-90ab-cdef-1234567890ab").unwrap();
        assert_eq!(id.to_string(), "a1b2c3d4-5678-90ab-cdef-1234567890ab");
        for bad in [
            "",
            "a1b2c3d4567890abcdef1234567890ab",
            "{a1b2c3d4-5678-90ab-cdef-1234567890ab}",
            "urn:uuid:a1b2c3d4-5678-90ab-cdef-1234567890ab",
            "a1b2c3d4-5678-90ab-cdef-1234567890aX",
            "../a1b2c3d4-5678-90ab-cdef-1234567890",
        ] {
            assert_eq!(
                GenerationId::parse(bad),
                Err(GatewayError::InvalidGenerationId)
            );
        }
    }
}
