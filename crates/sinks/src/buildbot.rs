//! Buildbot's `base` change hook: `POST /change_hook/base`, form-encoded, one change per
//! request. Buildbot does not parse JSON bodies (it stores a blank change and answers
//! 200), so the fields go as a form, with `files` and `properties` as JSON strings.

use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::config::HumanDuration;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use reqwest::Client;
use serde::Deserialize;

use crate::http;

/// `type = "buildbot"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Buildbot;

/// `[sink]` keys of `type = "buildbot"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildbotConfig {
    /// e.g. `http://127.0.0.1:8010/change_hook/base`
    pub url: String,
    /// HTTP basic auth for Buildbot's `change_hook_auth`.
    pub username: Option<String>,
    /// Environment variable holding the basic-auth password.
    pub password_env: Option<String>,
    /// How long one request may take (default 30 s).
    pub timeout: Option<HumanDuration>,
    /// A PEM bundle to trust besides the system's roots (a master behind a private CA).
    pub ca_file: Option<String>,
}

impl SinkType for Buildbot {
    const TYPE: &'static str = "buildbot";
    type Config = BuildbotConfig;

    fn check(&self, context: &SinkContext, config: &BuildbotConfig) -> Result<(), Refusal> {
        http::check_ca_file(context, config.ca_file.as_deref())?;
        if config.password_env.is_some() && config.username.is_none() {
            return Err(Refusal::at("password_env", "password_env needs a username"));
        }
        http::check_timeout(config.timeout)?;
        http::check_url(&config.url)
    }

    fn open(&self, context: &SinkContext, config: BuildbotConfig) -> Result<Arc<dyn Sink>, String> {
        let client = http::client(
            context,
            config.timeout.map(|t| t.0),
            config.ca_file.as_deref(),
        )?;
        Ok(Arc::new(BuildbotSink { client, config }))
    }
}

/// One form POST per change to Buildbot's base change hook.
pub struct BuildbotSink {
    client: Client,
    config: BuildbotConfig,
}

impl BuildbotSink {
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
