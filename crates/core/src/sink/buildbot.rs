//! Buildbot's `base` change hook: `POST /change_hook/base`, form-encoded, one change per
//! request. Buildbot does not parse JSON bodies (it stores a blank change and answers
//! 200), so the fields go as a form, with `files` and `properties` as JSON strings.

use async_trait::async_trait;
use reqwest::Client;

use super::http;
use super::{Sink, SinkError, SinkFailure};
use crate::config::BuildbotSinkConfig;
use crate::model::Change;

pub struct BuildbotSink {
    client: Client,
    config: BuildbotSinkConfig,
}

impl BuildbotSink {
    pub fn new(config: BuildbotSinkConfig) -> Result<Self, String> {
        let client = http::client(config.timeout.map(|t| t.0))?;
        Ok(BuildbotSink { client, config })
    }

    async fn post(&self, change: &Change) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(&self.config.url)
            .form(&form_fields(change)?);
        if let Some(username) = &self.config.username {
            let password = match &self.config.password_env {
                Some(variable) => Some(http::secret(variable, "password_env")?),
                None => None,
            };
            request = request.basic_auth(username, password);
        }
        http::send(request).await
    }
}

#[async_trait]
impl Sink for BuildbotSink {
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        http::one_by_one(changes, |change| self.post(change)).await
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn max_in_flight(&self) -> usize {
        http::IN_FLIGHT
    }
}

/// The change as Buildbot's field names. Optional fields are left out rather than sent
/// empty: an empty `codebase` is not the same as none to Buildbot's schedulers.
fn form_fields(change: &Change) -> Result<Vec<(&'static str, String)>, SinkError> {
    let mut fields = vec![
        ("revision", change.revision.clone()),
        ("author", change.author.clone()),
        ("comments", change.comments.clone()),
        ("repository", change.repository.clone()),
        ("project", change.project.clone()),
        ("when_timestamp", change.when_timestamp.to_string()),
        ("files", json(&change.files)?),
        ("properties", json(&change.properties)?),
    ];
    let optional = [
        ("committer", change.committer.as_ref()),
        ("branch", change.branch.as_ref()),
        ("category", change.category.as_ref()),
        ("revlink", change.revlink.as_ref()),
        ("codebase", Some(&change.codebase).filter(|c| !c.is_empty())),
    ];
    fields.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?.clone()))),
    );
    Ok(fields)
}

fn json(value: &impl serde::Serialize) -> Result<String, SinkError> {
    serde_json::to_string(value)
        .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))
}
