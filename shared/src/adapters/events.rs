//! Completion events on an EventBridge bus (`EVENT_BUS_NAME`, the account's default bus unless
//! set). PutEvents answers 200 with per-entry failures: those are failures here too.

use crate::config::{Env, optional};
use crate::ports::{BoxFuture, Events, NotaryError};

/// The bus the completion events go to, from `EVENT_BUS_NAME` (name or ARN; `default` if unset).
pub fn event_bus(env: &dyn Env) -> String {
    optional(env, "EVENT_BUS_NAME").unwrap_or_else(|| "default".into())
}

/// An EventBridge bus as [`Events`].
pub struct EventBridgeEvents {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeEvents {
    /// The bus `bus` (name or ARN) through `client`.
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }
}

impl Events for EventBridgeEvents {
    fn publish<'a>(
        &'a self,
        source: &'a str,
        detail_type: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), NotaryError>> {
        Box::pin(async move {
            let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(&self.bus)
                .source(source)
                .detail_type(detail_type)
                .detail(detail)
                .build();
            let out = self
                .client
                .put_events()
                .entries(entry)
                .send()
                .await
                .map_err(|e| {
                    NotaryError(aws_sdk_eventbridge::error::DisplayErrorContext(e).to_string())
                })?;
            if out.failed_entry_count() > 0 {
                let why = out
                    .entries()
                    .iter()
                    .filter_map(|e| {
                        e.error_code()
                            .map(|c| format!("{c}: {}", e.error_message().unwrap_or("")))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(NotaryError(format!(
                    "EventBridge refused the event on bus {}: {why}",
                    self.bus
                )));
            }
            Ok(())
        })
    }
}
