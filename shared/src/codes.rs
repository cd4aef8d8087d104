//! The names the pipeline reports: what became of a message ([`Outcome`]), why a message was
//! refused ([`RejectCode`]) and the values it measures ([`Metric`]). Each is an enum so that the
//! whole set is visible to the compiler and to a reader in one place; the string each stands for
//! (in logs, metrics, dead-letter attributes and manifests) is derived here and nowhere else.

/// An enum of names: its variants, the string each stands for, and comparisons with strings (for
/// tests and logs).
macro_rules! names {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vm])* $v,)*
        }

        impl $name {
            /// Every name, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$v,)*];

            /// The string this name stands for.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

names! {
    /// What a stage did with a message: one log line and one count per message.
    pub enum Outcome {
        /// intake: a new run.
        Accepted = "accepted",
        /// intake: a run seen before that never reached submit, sent on.
        Resent = "resent",
        /// Another message holds the run or command, or it is past this stage.
        Duplicate = "duplicate",
        /// submit: Defender accepted the live response.
        Submitted = "submitted",
        /// submit: an earlier attempt's submission was found by its comment.
        Recovered = "recovered",
        /// submit: the deadline passed before Defender accepted it.
        Deadline = "deadline",
        /// submit: Defender refused the live response.
        Refused = "refused",
        /// submit: a library file the run names cannot be had as the playbook needs it; the run
        /// ended before submission.
        LibraryRefused = "library_refused",
        /// submit or poll: too many failures, or the action was lost; the run ended.
        GaveUp = "gave_up",
        /// Defender answered 429: the message waits.
        Throttled = "throttled",
        /// submit: the device already has a live response session.
        DeviceBusy = "device_busy",
        /// A failure worth retrying (5xx, timeout): the message waits.
        Transient = "transient",
        /// The tenant budget is spent for now: the message waits.
        Paced = "paced",
        /// poll: the action is still running.
        Waiting = "waiting",
        /// poll: Defender does not show the action yet (right after creation).
        NotYetVisible = "not_yet_visible",
        /// poll: the action was cancelled at the deadline.
        Cancelled = "cancelled",
        /// poll: a cancel is to be tried again.
        CancelRetry = "cancel_retry",
        /// poll: the action ended; its results were handed to collect.
        Ended = "ended",
        /// collect: the package is evidence.
        Collected = "collected",
        /// collect: the copy goes on in the next invocation, from its checkpoint.
        Continued = "continued",
        /// collect: the copy failed and is tried again.
        CopyRetry = "copy_retry",
        /// collect: the command is recorded as not collected.
        CollectFailed = "collect_failed",
        /// collect: the result link was not one collect follows.
        LinkRefused = "link_refused",
    }
}

names! {
    /// Why a message was refused: the `lr-reject-code` attribute of its body in the dead-letter
    /// queue, so an operator can tell what to fix before re-driving it.
    pub enum RejectCode {
        /// The SQS message has no body.
        EmptyBody = "empty_body",
        /// The alert body is larger than [`crate::alerts::MAX_ALERT_BYTES`].
        TooLarge = "too_large",
        /// The alert body is not valid JSON.
        InvalidJson = "invalid_json",
        /// The alert's JSON names a key twice in one object (ambiguous: refused rather than guessed).
        DuplicateKey = "duplicate_key",
        /// An SNS or EventBridge wrapping without the alert where it belongs, or wrapped twice.
        BadEnvelope = "bad_envelope",
        /// Neither an `lr.alert/v1` alert nor a Defender alert.
        UnknownFormat = "unknown_format",
        /// An alert with a `schema` other than `lr.alert/v1`.
        UnknownSchema = "unknown_schema",
        /// A Defender alert without a `machineId`.
        MissingMachine = "missing_machine",
        /// A field too long, with control or bidirectional characters, or too many parameters.
        InvalidField = "invalid_field",
        /// The alert id is not a valid [`crate::ids::AlertId`].
        InvalidAlertId = "invalid_alert_id",
        /// The machine id is not 40 hex characters.
        InvalidMachineId = "invalid_machine_id",
        /// The alert asks for a playbook that is not configured.
        UnknownPlaybook = "unknown_playbook",
        /// No playbook matches the alert (or every match refused its values).
        NoPlaybook = "no_playbook",
        /// An alert value fails its placeholder's kind or the place it would go.
        InvalidParameter = "invalid_parameter",
        /// A required placeholder has no value in the alert.
        MissingParameter = "missing_parameter",
        /// Every command of the chosen playbook was left out for missing optional values.
        NothingToRun = "nothing_to_run",
        /// A rendered command failed its final check (a bug in rendering, never an alert's fault).
        UnsafeRender = "unsafe_render",
        /// An alert that names no tenant, in a deployment with a tenant registry.
        NoTenant = "no_tenant",
        /// An alert (or a run's stage message) for a tenant the deployment does not serve.
        UnknownTenant = "unknown_tenant",
        /// An alert from a sender the tenant it names does not allow.
        SenderNotAllowed = "sender_not_allowed",
        /// An alert whose playbook its tenant may not run.
        PlaybookNotAllowed = "playbook_not_allowed",
        /// A stage message that is not JSON, has another version or does not fit its schema.
        InvalidMessage = "invalid_message",
        /// A stage message names a run that has no record.
        UnknownRun = "unknown_run",
        /// A stage message names a run whose record does not parse.
        UnreadableRun = "unreadable_run",
        /// The record a stage message would act on does not exist.
        UnknownRecord = "unknown_record",
        /// A stored command record (or other record) that does not parse.
        UnreadableRecord = "unreadable_record",
        /// A collect job names a command index the run does not have.
        UnknownCommand = "unknown_command",
        /// A poll or collect job naming another action than its run's.
        ActionMismatch = "action_mismatch",
        /// A run's manifest or signature in the bucket that the pipeline did not write: the
        /// manifest is not the one the run's records render, or the signature document does not
        /// verify under the deployment's key. Someone with write access to the bucket planted it;
        /// the run is left unsealed until a person has looked (an alarm, through the DLQ).
        PlantedCustody = "planted_custody",
    }
}

impl RejectCode {
    /// The code `s` stands for, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Refused by the tenant check (which tenant, and may this sender start runs there). Such an
    /// alert must not be re-driven: the re-sent message is checked against whoever re-drives it,
    /// not the sender that sent it, so a re-drive would let one customer's alert through under an
    /// operator's identity. Only its sender may send it again.
    pub fn is_sender_check(self) -> bool {
        matches!(
            self,
            Self::NoTenant | Self::UnknownTenant | Self::SenderNotAllowed
        )
    }
}

impl Outcome {
    /// Its CloudWatch metric name: `throttled` → `Throttled`, `copy_retry` → `CopyRetry`.
    pub fn metric_name(self) -> String {
        self.as_str()
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }
}

names! {
    /// What the batch did with a message a stage did not handle: logged as its outcome.
    pub enum Disposition {
        /// Refused: its body went to the dead-letter queue with the reason.
        Rejected = "rejected",
        /// Refused, but the dead-letter queue could not take it: left for redelivery.
        RejectFailed = "reject_failed",
        /// Left for SQS to deliver again (a failure worth retrying).
        Retry = "retry",
    }
}

names! {
    /// A value a stage measures, besides the count of outcomes.
    pub enum Metric {
        /// Bytes of a result package stored as evidence (unit `Bytes`).
        BytesCopied = "BytesCopied",
        /// Seconds from intake accepting the alert to a package stored as evidence (unit `Seconds`).
        TimeToEvidence = "TimeToEvidence",
        /// Messages refused to the dead-letter queue (unit `Count`).
        Rejected = "Rejected",
        /// Messages left for redelivery (unit `Count`).
        Redelivered = "Redelivered",
    }
}

impl Metric {
    /// The CloudWatch unit of its values.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::BytesCopied => "Bytes",
            Self::TimeToEvidence => "Seconds",
            Self::Rejected | Self::Redelivered => "Count",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for s in Outcome::ALL.iter().map(|o| o.as_str()) {
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s} twice");
        }
        seen.clear();
        for s in RejectCode::ALL.iter().map(|c| c.as_str()) {
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s} twice");
        }
        assert_eq!(Outcome::GaveUp, "gave_up");
        assert_eq!(Outcome::CopyRetry.metric_name(), "CopyRetry");
        assert_eq!(Outcome::Throttled.metric_name(), "Throttled");
        assert_eq!(RejectCode::ActionMismatch.to_string(), "action_mismatch");
    }
}
