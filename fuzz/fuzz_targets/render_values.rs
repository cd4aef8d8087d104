//! Any parameter value, in every placeholder kind and every place a kind may go: either it is
//! refused as an invalid parameter, or every rendered command passes the final check and, in a
//! script's arguments, the value is exactly one argument, unchanged.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shared::alerts::playbook::Playbooks;
use shared::alerts::render::{check_rendered, quote_literal, split_args};
use shared::alerts::{Alert, AlertFormat, Envelope};
use shared::defender::{CommandType, MachineId};
use shared::ids::AlertId;

const PLAYBOOK: &str = r#"
[[playbooks]]
name = "fuzz"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "-Path {path} -Mode {arg} -Sha {sha} -Name {proc}"
[[playbooks.commands]]
type = "GetFile"
path = "{path}"
[[playbooks.commands]]
type = "GetFile"
path = "C:\\dumps\\{proc}.dmp.zip"
[[playbooks.commands]]
type = "GetFile"
path = "C:\\hashes\\f-{sha}.bin"
[playbooks.placeholders.path]
kind = "windows_path"
[playbooks.placeholders.arg]
kind = "script_arg"
[playbooks.placeholders.sha]
kind = "sha256"
[playbooks.placeholders.proc]
kind = "process_name"
"#;

/// Good values for the placeholders the input does not fill.
const DEFAULTS: [(&str, &str); 4] = [
    ("path", "C:\\Users\\a\\x.exe"),
    ("arg", "Quick"),
    (
        "sha",
        "abababababababababababababababababababababababababababababababab",
    ),
    ("proc", "lsass"),
];

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data).into_owned();
    let playbooks = Playbooks::from_toml(PLAYBOOK).expect("the fuzz playbook loads");
    let playbook = &playbooks.all()[0];
    for (i, (name, _)) in DEFAULTS.iter().enumerate() {
        let mut parameters: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parameters.insert(name.to_string(), value.clone());
        let alert = Alert {
            format: AlertFormat::Native,
            envelope: Envelope::None,
            alert_id: AlertId::parse("fuzz-1").unwrap(),
            machine_id: MachineId::parse(&"a".repeat(40)).unwrap(),
            title: String::new(),
            category: String::new(),
            severity: String::new(),
            source: String::new(),
            playbook: None,
            parameters,
        };
        let commands = match playbook.render(&alert) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.code, "invalid_parameter", "{name}={value:?}: {e}");
                continue;
            }
        };
        for c in &commands {
            if let Err(problem) = check_rendered(c) {
                panic!("{name}={value:?}: rendered {c:?} fails the final check: {problem}");
            }
        }
        let args = commands
            .iter()
            .find(|c| c.kind == CommandType::RunScript)
            .and_then(|c| c.param("Args"))
            .expect("the script command renders");
        let mut expected: Vec<&str> = Vec::new();
        let flags = ["-Path", "-Mode", "-Sha", "-Name"];
        for (j, (flag, default)) in flags.into_iter().zip(DEFAULTS).enumerate() {
            expected.push(flag);
            expected.push(if j == i { value.as_str() } else { default.1 });
        }
        let got = split_args(args).expect("checked above");
        assert_eq!(got, expected, "{name}={value:?}: {args}");
        // Written as a literal, whatever its kind (bare, PowerShell may read a number or an array).
        assert!(args.contains(&quote_literal(&value)), "{name}={value:?}: {args}");
        if *name == "path" {
            assert!(
                commands
                    .iter()
                    .any(|c| c.kind == CommandType::GetFile && c.param("Path") == Some(&value)),
                "{value:?}"
            );
        }
    }
});
