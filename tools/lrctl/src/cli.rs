//! The command line, declared once (clap derive): the global settings and `--json`, and each
//! subcommand's arguments with its `--help`. `main` parses it; [`crate::run`] carries it out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::SettingsArgs;

/// lrctl: find, verify and fetch live-response evidence; read and redrive refused messages; send
/// alerts; export the manifest signing key; check and sync the playbooks' library files.
#[derive(Debug, Parser)]
#[command(name = "lrctl", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Print JSON for scripts instead of tables and text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List runs, newest first: alert, device, playbook, state, outcome, age, commands collected.
    Runs(RunsArgs),
    /// A run's timeline: received, submitted, each status, each command collected, manifest
    /// written, signed, event published.
    Show {
        /// The run id (32 hex characters).
        run: String,
    },
    /// Check manifests, their signatures and every evidence object's hashes; exits 1 on any
    /// mismatch, naming the object.
    Verify(VerifyArgs),
    /// Download a run's evidence into DIR: the manifest's signature is checked first (as `verify`
    /// does), then each object's SHA-256 against the manifest.
    Fetch(FetchArgs),
    /// List the messages each stage refused or gave up on; `--redrive` sends them back.
    Dlq(DlqArgs),
    /// Send an alert (a JSON file) to the alerts queue and print the message id.
    Send {
        /// The alert body, e.g. an `lr.alert/v1` document.
        file: PathBuf,
    },
    /// The manifest signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The scripts and files the playbooks use, in Defender's live response library: `status`
    /// compares, `sync` uploads what the pipeline manages (needs Library.Manage).
    ///
    /// Every library file the playbook file declares (`[[library_files]]`) is compared, by SHA-256,
    /// with the tenant's library, and judged by the same rules submit applies before a run: a file
    /// the playbooks ship is kept under a versioned name (triage.ps1 as triage-<first 12 hex of
    /// its SHA-256>.ps1), uploaded when missing and replaced when the copy under that name is a
    /// stale one the pipeline uploaded (its description ends with the pipeline's marker), or
    /// someone else's and the entry says replace_unmanaged = true; anyone else's file is left
    /// alone (a file under the plain name is not the pipeline's and is ignored), and an external
    /// file must be there under its own name (with its pinned SHA-256, if any).
    ///
    /// Playbooks: the bundled ones, or --playbooks / LR_PLAYBOOKS: a local playbook file (its
    /// library folder beside it) or s3://bucket/key as the deployment's PLAYBOOKS_S3_URI.
    ///
    /// Defender is reached as the functions reach it: MDE_CREDENTIALS_SECRET_ID (the Secrets
    /// Manager secret with the app's tenant_id, client_id and client_secret; read with the AWS
    /// credentials lrctl uses), MDE_CLOUD, and MDE_API_BASE_URL, MDE_LOGIN_BASE_URL,
    /// MDE_TOKEN_SCOPE, MDE_HTTP_TIMEOUT_SECS if the deployment sets them; from the environment
    /// or --env-file (a stack's outputs do not carry them; the local stack's .local/lrctl.env
    /// does). Listing and uploading need the app's Library.Manage application permission.
    #[command(subcommand)]
    Library(LibraryCommand),
    /// The Defender tenants of the tenant registry (LR_TENANTS: a path or s3://bucket/key, else
    /// the deployment's TENANTS_S3_URI).
    #[command(subcommand)]
    Tenants(TenantsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// For each tenant (or TENANT): reads its secret, gets a token in its Entra tenant, holds the
    /// token's granted permissions against what the pipeline needs (Machine.LiveResponse,
    /// Machine.Read.All, Library.Manage), and lists machine actions and the library once; prints
    /// what works, what is missing and how to fix it (the admin-consent link). Exits 1 when
    /// anything is missing. Reads the secrets with the AWS credentials lrctl uses.
    Check {
        /// Only this tenant (its key in the registry).
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LibraryCommand {
    /// One line per declared library file: its name in the library (a bundled file's versioned
    /// name, followed by the playbook's name), its source, the SHA-256 the playbooks expect, the
    /// library's, whether the pipeline uploaded that copy, and the verdict; exits 0 only when
    /// every file is ready (to gate a deploy).
    Status(PlaybooksArg),
    /// Uploads what is missing, replaces what the verdict says (a stale copy the pipeline uploaded,
    /// or someone else's file where replace_unmanaged = true), never deletes, never touches a
    /// refused file; then lists again and prints the final status. Exits 1 if a file was refused
    /// or an upload failed. Needs the Library.Manage application permission.
    Sync(SyncArgs),
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlaybooksArg {
    /// The playbook file: a local path (its library folder beside it) or s3://bucket/key, as the
    /// deployment's PLAYBOOKS_S3_URI [env: LR_PLAYBOOKS; default: the bundled playbooks].
    #[arg(long, value_name = "PATH|s3://BUCKET/KEY")]
    pub playbooks: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub playbooks: PlaybooksArg,
    /// Print what would be uploaded or replaced, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// Only runs in this state: received, submitting, submitted, collecting, completed, failed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only runs with this outcome: succeeded, partial, failed, timed_out, cancelled.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only runs on this device (machine id or DNS name).
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Only runs of this alert id.
    #[arg(long, value_name = "ID")]
    pub alert: Option<String>,
    /// Only runs received within this long: 90m, 24h, 7d.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The run id.
    pub run: String,
    /// Where to write (created if missing; must be empty unless --force).
    pub dir: PathBuf,
    /// Also write the decompressed content of GetFile packages (checked against the manifest).
    #[arg(long)]
    pub decompress: bool,
    /// Write into DIR even if it is not empty (a manifest.json and manifest.sig.json already in
    /// it are removed first).
    #[arg(long)]
    pub force: bool,
    /// Fetch even if the manifest's signature is missing or does not verify (each object is
    /// still checked against the manifest, which nothing then vouches for).
    #[arg(long)]
    pub unverified: bool,
    /// Check the signature offline with this PEM public key (from `lrctl key export`) instead of
    /// asking KMS.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The run to verify.
    #[arg(required_unless_present_any = ["all", "dir"], conflicts_with_all = ["all", "dir"])]
    pub run: Option<String>,
    /// Verify every run in the bucket: every evidence folder and every run record.
    #[arg(long, conflicts_with = "dir")]
    pub all: bool,
    /// With --all: skip runs whose signature verifies and was made longer ago than this (90m,
    /// 24h, 7d); a run that fails verification is never skipped.
    #[arg(long, value_name = "DURATION", requires = "all")]
    pub since: Option<String>,
    /// Verify a folder written by `lrctl fetch` offline (needs --public-key): its manifest, the
    /// signature and every file's hashes.
    #[arg(long, value_name = "DIR", requires = "public_key")]
    pub dir: Option<PathBuf>,
    /// Verify signatures offline with this PEM public key (from `lrctl key export`) instead of
    /// asking KMS.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// Only this stage's dead-letter queue: alerts (or intake), submit, poll, collect.
    #[arg(long)]
    pub stage: Option<String>,
    /// Send each message back to its stage's input queue and delete it from the dead-letter queue.
    #[arg(long)]
    pub redrive: bool,
    /// Redrive without asking.
    #[arg(long, requires = "redrive")]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Export the signing key's public key as PEM, for `verify --public-key`.
    Export {
        /// Write it here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}
