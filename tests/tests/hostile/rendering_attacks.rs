//! Attacks on placeholder rendering, each refused: a file name that stops all collection for its
//! alert, bare script values PowerShell reads as numbers or arrays, and a path argument that could
//! pass for a parameter name if Defender ever split arguments on spaces. (Each worked on the first
//! fix, f048a82, found by an adversarial review of issue 10.)

use shared::alerts::playbook::Playbooks;
use shared::alerts::{AlertError, parse};
use shared::defender::{Command, CommandType};
use testkit::alerts::defender_file_alert;

fn render_bundled(body: &str) -> Result<Vec<Command>, AlertError> {
    let playbooks = Playbooks::bundled().unwrap();
    let alert = parse(body).expect("the alert parses");
    playbooks.select(&alert)?.render(&alert)
}

/// The attacker names the file on the endpoint. Every name below is a legal NTFS/Win32 file name
/// (the first three are ordinary, the en dash and curly apostrophe appear in real phishing
/// attachments). Each makes `file_path` fail `windows_path`, so the whole alert is dead-lettered:
/// not only the GetFile of the file, but the triage script of the same playbook. An attacker
/// chooses a name and the pipeline collects nothing for that alert.
#[test]
fn an_attacker_chosen_file_name_does_not_stop_all_collection() {
    let dir = "C:\\Users\\alice\\Downloads";
    let mut dropped = Vec::new();
    for name in [
        "Invoice \u{2013} March.pdf.exe", // en dash
        "Bob\u{2019}s invoice.exe",       // right single quotation mark
        "it's.exe",
        "{setup}.exe",
        "100%.exe",
        "a&b.exe",
        "x$.exe",
    ] {
        let body = defender_file_alert("Malware", "High", dir, name);
        match render_bundled(&body) {
            Ok(cmds) => assert!(!cmds.is_empty()),
            Err(e) => dropped.push(format!("{name:?}: {} ({})", e.code, e.message)),
        }
    }
    assert!(
        dropped.is_empty(),
        "alerts dropped whole because of the file name:\n{}",
        dropped.join("\n")
    );
}

/// Bare values in RunScript args are not literal strings to PowerShell: in argument mode a token
/// that scans as a number is a number (`1kb` is 1024, `0x10` is 16, `1e3` is 1000), a comma makes
/// an array (`a,b`), and a trailing or leading comma is a parse error or a one-element array. The
/// render fuzz target asserts that a value "comes out as exactly one unchanged argument", which
/// `split_args` models but PowerShell does not. Each value below passes its kind's check and is
/// written bare.
#[test]
fn bare_script_values_are_plain_strings_to_powershell() {
    const PB: &str = r#"
[[library_files]]
name = "minidump.ps1"
external = true

[[playbooks]]
name = "bare"
[[playbooks.commands]]
type = "RunScript"
script = "minidump.ps1"
args = "-Name {proc} -Mode {mode}"
[playbooks.placeholders.proc]
kind = "process_name"
[playbooks.placeholders.mode]
kind = "script_arg"
"#;
    let p = Playbooks::from_toml(PB).unwrap();
    let mut not_literal = Vec::new();
    for (proc_name, mode) in [
        ("1kb", "Quick"),
        ("0x10", "Quick"),
        ("1e3", "Quick"),
        ("lsass", "a,b"),
        ("lsass", "Quick,"),
        ("lsass", ",Quick"),
        ("lsass", "1gb"),
    ] {
        let body = serde_json::json!({
            "schema": "lr.alert/v1", "alert_id": "a-1", "machine_id": "a".repeat(40),
            "title": "t", "category": "c", "severity": "High", "source": "s",
            "parameters": {"proc": proc_name, "mode": mode}
        })
        .to_string();
        let alert = parse(&body).unwrap();
        let Ok(cmds) = p.all()[0].render(&alert) else {
            continue; // refused: fine
        };
        let args = cmds
            .iter()
            .find(|c| c.kind == CommandType::RunScript)
            .and_then(|c| c.param("Args"))
            .unwrap()
            .to_string();
        // A value PowerShell reads as a plain string: quoted, or a bare word that starts with a
        // letter and holds no comma.
        let plain = |v: &str| {
            args.contains(&format!("'{v}'"))
                || (v.starts_with(|c: char| c.is_ascii_alphabetic()) && !v.contains(','))
        };
        if !plain(proc_name) || !plain(mode) {
            not_literal.push(args);
        }
    }
    assert!(
        not_literal.is_empty(),
        "args PowerShell does not read as the values given:\n{}",
        not_literal.join("\n")
    );
}

/// Defence in depth for an unverified assumption: the quoting relies on Defender handing `Args` to
/// the PowerShell language parser. If the agent instead appends them to a process command line
/// (`powershell -File script.ps1 <Args>`), single quotes are not quotes and this file name, which
/// an attacker can give a file, becomes three arguments, the middle one `-Recurse`, a switch of the
/// script. A path that goes into args could refuse " -" (a space followed by a dash) at no cost.
#[test]
fn a_path_in_args_cannot_look_like_a_parameter_if_split_on_spaces() {
    let body = defender_file_alert(
        "UnwantedSoftware",
        "Low",
        "C:\\Users\\alice\\Downloads",
        "x -Recurse y.exe",
    );
    let cmds = match render_bundled(&body) {
        Err(_) => return, // refused: fine
        Ok(c) => c,
    };
    let args = cmds
        .iter()
        .find(|c| c.kind == CommandType::RunScript)
        .and_then(|c| c.param("Args"))
        .unwrap();
    assert!(
        !args.split(' ').skip(1).any(|t| t.starts_with('-')),
        "split on spaces, {args:?} carries a parameter name taken from the file name"
    );
}
