use std::fmt;

use uuid::Uuid;

use crate::GatewayError;

/// The id of one job, as `x-job-id` and `/v1/images/jobs/{id}` name it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh id, time-ordered (a UUIDv7). It is no capability: a job is only ever shown
    /// to its owner.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the hyphenated form, any case. Anything else names no job: `404
    /// job_not_found`, the same answer as another caller's job.
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let hyphenated = raw.len() == 36 && raw.as_bytes().get(8) == Some(&b'-');
        match Uuid::try_parse(raw) {
            Ok(id) if hyphenated => Ok(JobId(id)),
            _ => Err(GatewayError::JobNotFound),
        }
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(id: Uuid) -> Self {
        JobId(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.as_hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hyphenated_form_names_a_job() {
        let id = JobId::new();
        assert_eq!(JobId::parse(&id.to_string()).unwrap(), id);
        for bad in ["", "x", "a1b2c3d4567890abcdef1234567890ab", "../etc/passwd"] {
            assert_eq!(JobId::parse(bad), Err(GatewayError::JobNotFound));
        }
    }
}
