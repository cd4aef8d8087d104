use super::*;
use crate::alerts::playbook::{PlaybookError, Playbooks};
use crate::alerts::{Alert, AlertFormat, Envelope};
use crate::defender::MachineId;
use crate::ids::AlertId;

pub(crate) fn alert(category: &str, params: &[(&str, &str)]) -> Alert {
    Alert {
        format: AlertFormat::Native,
        envelope: Envelope::None,
        alert_id: AlertId::parse("a1").unwrap(),
        machine_id: MachineId::parse(&"a".repeat(40)).unwrap(),
        title: "Suspicious PowerShell".into(),
        category: category.into(),
        severity: "High".into(),
        source: "edr".into(),
        playbook: None,
        tenant: None,
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The playbook file `toml` with the scripts these tests run declared (someone else keeps them).
fn one(toml: &str) -> Result<Playbooks, PlaybookError> {
    let declared = "[[library_files]]\nname = \"inspect.ps1\"\nexternal = true\n\n[[library_files]]\nname = \"x.ps1\"\nexternal = true\n";
    Playbooks::from_toml(&format!("{declared}{toml}"))
}

/// A playbook that puts `file_path` into a script argument, and `mode`, `sha` and `proc`
/// (all optional, so that command is left out unless all three are given) into another.
const ARGS_PLAYBOOK: &str = r#"
[[playbooks]]
name = "args"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "-Path {file_path}"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "-Mode {mode} -Sha {sha} -Name {proc}"
[playbooks.placeholders.file_path]
kind = "windows_path"
[playbooks.placeholders.mode]
kind = "script_arg"
required = false
[playbooks.placeholders.sha]
kind = "sha256"
required = false
[playbooks.placeholders.proc]
kind = "process_name"
required = false
"#;

fn render_one(toml: &str, params: &[(&str, &str)]) -> Result<Vec<Command>, AlertError> {
    let p = one(toml).unwrap();
    p.all()[0].render(&alert("Malware", params))
}

#[test]
fn a_path_goes_into_args_as_one_quoted_literal() {
    let cmds = render_one(
        ARGS_PLAYBOOK,
        &[("file_path", "C:\\Program Files\\a (1)\\#b @c,d=e+f-g.exe")],
    )
    .unwrap();
    assert_eq!(
        cmds[0].param("Args"),
        Some("-Path 'C:\\Program Files\\a (1)\\#b @c,d=e+f-g.exe'")
    );
    let cmds = render_one(
        ARGS_PLAYBOOK,
        &[
            ("file_path", "C:\\x.exe"),
            ("mode", "Quick"),
            ("sha", &"ab".repeat(32)),
            ("proc", "lsass"),
        ],
    )
    .unwrap();
    assert_eq!(cmds[0].param("Args"), Some("-Path 'C:\\x.exe'"));
    // Every value is a literal: bare, `1kb` would be a number and `a,b` an array.
    assert_eq!(
        cmds[1].param("Args").unwrap(),
        format!("-Mode 'Quick' -Sha '{}' -Name 'lsass'", "ab".repeat(32))
    );
}

#[test]
fn a_path_in_a_script_argument_must_be_ascii_but_need_not_be_in_get_file() {
    for bad in [
        "C:\\Users\\a\\\u{441}\u{447}\u{451}\u{442}.pdf.exe",
        "C:\\Users\\a\\\u{ff43}\u{ff41}\u{ff4c}\u{ff43}.exe",
        "C:\\Windows\\Syst\u{435}m32\\x.dll",
        "C:\\a\\x\u{b2}.exe",
    ] {
        let e = render_one(ARGS_PLAYBOOK, &[("file_path", bad)]).unwrap_err();
        assert_eq!(e.code, "invalid_parameter", "{bad:?}: {e}");
        let p = Playbooks::bundled().unwrap();
        let a = alert("Malware", &[("file_path", bad)]);
        let cmds = p.select(&a).unwrap().render(&a).unwrap();
        assert!(cmds.iter().any(|c| c.param("Path") == Some(bad)));
    }
}

#[test]
fn a_value_holding_a_placeholder_is_never_expanded() {
    let both = r#"
[[playbooks]]
name = "both"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "{file_path} {mode}"
[playbooks.placeholders.file_path]
kind = "windows_path"
[playbooks.placeholders.mode]
kind = "script_arg"
"#;
    let r = render_one(both, &[("file_path", "C:\\a\\{mode}"), ("mode", "Quick")]);
    assert_eq!(r.unwrap_err().code, "invalid_parameter");
}

#[test]
fn playbooks_that_put_a_kind_where_it_cannot_be_safe_are_refused() {
    let cmd = |ty: &str, field: &str, text: &str, kind: &str| {
        format!(
            "[[playbooks]]\nname = \"pos\"\n[[playbooks.commands]]\ntype = \"{ty}\"\n{}{field} = {text:?}\n[playbooks.placeholders.v]\nkind = \"{kind}\"\n",
            if ty == "RunScript" {
                "script = \"x.ps1\"\n"
            } else {
                ""
            }
        )
    };
    for (ty, field, text, kind) in [
        ("RunScript", "args", "-Path:{v}", "windows_path"),
        ("RunScript", "args", "x{v}", "script_arg"),
        ("RunScript", "args", "{v}.dmp", "process_name"),
        ("RunScript", "args", "'{v}'", "windows_path"),
        ("RunScript", "args", "-Name $x {v}", "script_arg"),
        ("RunScript", "args", "a;b {v}", "script_arg"),
        ("GetFile", "path", "C:\\x\\{v}", "windows_path"),
        ("GetFile", "path", "{v}\\x", "windows_path"),
        ("GetFile", "path", "C:\\x\\{v}", "script_arg"),
        ("GetFile", "path", "{v}", "sha256"),
        ("GetFile", "path", "{v}", "process_name"),
        ("GetFile", "path", "C:\\x\\a{v}.dmp", "process_name"),
        ("GetFile", "path", "C:\\x\\{v}1.dmp", "process_name"),
        ("GetFile", "path", "C:\\x\\..\\{v}.dmp", "process_name"),
        (
            "GetFile",
            "path",
            format!("C:\\{}\\{{v}}", "a".repeat(200)).as_str(),
            "process_name",
        ),
        ("GetFile", "path", "C:\\Temp\\*.log", "sha256"),
    ] {
        let toml = cmd(ty, field, text, kind);
        let e = one(&toml).expect_err(&toml);
        assert_eq!(
            (e.playbook.as_str(), e.field.as_str()),
            ("pos", "commands[0]"),
            "{toml}: {e}"
        );
    }
    for (ty, field, text, kind) in [
        ("RunScript", "args", "-Path {v}", "windows_path"),
        ("RunScript", "args", "{v}", "script_arg"),
        ("GetFile", "path", "{v}", "windows_path"),
        (
            "GetFile",
            "path",
            "C:\\windows\\TEMP\\{v}.dmp.zip",
            "process_name",
        ),
        ("GetFile", "path", "C:\\x\\{v}\\y.txt", "process_name"),
        ("GetFile", "path", "C:\\q\\f-{v}.bin", "sha256"),
    ] {
        let toml = cmd(ty, field, text, kind);
        assert!(one(&toml).is_ok(), "{toml}: {:?}", one(&toml).err());
    }
}

fn values(v: &[(&str, PlaceholderKind, &str)]) -> BTreeMap<String, (PlaceholderKind, String)> {
    v.iter()
        .map(|(n, k, v)| (n.to_string(), (*k, v.to_string())))
        .collect()
}

#[test]
fn one_pass_never_expands_a_placeholder_inside_a_value() {
    // Script values cannot hold braces (the kinds refuse them); this checks the pass itself.
    let v = values(&[
        ("a", PlaceholderKind::ScriptArg, "{b}"),
        ("b", PlaceholderKind::ScriptArg, "B"),
    ]);
    let out = fill("p", "{a} {b} {a}", Slot::Arg, &v).unwrap();
    assert_eq!(out.as_deref(), Some("'{b}' 'B' '{b}'"));
    let v = values(&[
        ("a", PlaceholderKind::Sha256, "{a}"),
        ("b", PlaceholderKind::Sha256, "x"),
    ]);
    let out = fill("p", "C:\\{a}\\{b}", Slot::Path, &v).unwrap();
    assert_eq!(out.as_deref(), Some("C:\\{a}\\x"));
    assert_eq!(fill("p", "{a} {c}", Slot::Arg, &v).unwrap(), None);
}

#[test]
fn a_path_argument_is_one_literal_and_its_quotes_are_doubled() {
    assert_eq!(quote_literal("C:\\a (1)\\#b"), "'C:\\a (1)\\#b'");
    assert_eq!(quote_literal("C:\\it's"), "'C:\\it''s'");
    let v = values(&[("p", PlaceholderKind::WindowsPath, "C:\\a b (1).exe")]);
    let out = fill("p", "-Path {p} -Quick", Slot::Arg, &v)
        .unwrap()
        .unwrap();
    assert_eq!(out, "-Path 'C:\\a b (1).exe' -Quick");
    assert_eq!(
        split_args(&out).unwrap(),
        ["-Path", "C:\\a b (1).exe", "-Quick"]
    );
    // A legal file name that a script argument cannot carry safely is refused there (in a
    // GetFile path it is collected as it is).
    for name in [
        "C:\\it's.exe",
        "C:\\a&b.exe",
        "C:\\x$.exe",
        "C:\\[a].exe",
        "C:\\a -Recurse b.exe",
    ] {
        let v = values(&[("p", PlaceholderKind::WindowsPath, name)]);
        assert_eq!(
            fill("p", "{p}", Slot::Arg, &v).unwrap_err().code,
            "invalid_parameter",
            "{name}"
        );
        assert_eq!(
            fill("p", "{p}", Slot::Path, &v).unwrap().as_deref(),
            Some(name)
        );
    }
    let v = values(&[("p", PlaceholderKind::WindowsPath, "C:\\\u{2018}x\u{2019}")]);
    assert_eq!(
        fill("p", "{p}", Slot::Arg, &v).unwrap_err().code,
        "invalid_parameter"
    );
}

#[test]
fn the_final_check_refuses_anything_that_is_not_plainly_literal() {
    for bad in [
        "-Path C:\\a (1).exe",
        "-x #comment",
        "$(calc)",
        "a;b",
        "a|b",
        "a&b",
        "a>b",
        "a<b",
        "\"a\"",
        "`n",
        "a\nb",
        "a\tb",
        "@(1)",
        "{x}",
        "'unclosed",
        "'a'b",
        "a'b'",
        "'a$b'",
        "'a`b'",
        "'a\"b'",
        "'a;b'",
        "'a\u{2019}b'",
        "'C:\\\u{430}'",
        "\u{2013}Force",
        "'a\u{0}b'",
        "'%TEMP%'",
    ] {
        assert!(split_args(bad).is_err(), "{bad:?}");
        assert!(
            check_rendered(&Command::run_script("x.ps1", Some(bad))).is_err(),
            "{bad:?}"
        );
    }
    for ok in ["", "-Quick", "-Path 'C:\\a (1)\\#b.exe' -N x,y=1", "''"] {
        assert!(split_args(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        "C:\\Temp\\NUL.txt",
        "C:\\x\\..\\y",
        "C:\\x:ads",
        "C:\\%TEMP%\\x",
        "\\\\srv\\x",
    ] {
        assert!(check_rendered(&Command::get_file(bad)).is_err(), "{bad:?}");
    }
    for bad in ["../x.ps1", "a b.ps1", "..ps1", ""] {
        assert!(check_rendered(&Command::put_file(bad)).is_err(), "{bad:?}");
        assert!(
            check_rendered(&Command::run_script(bad, None)).is_err(),
            "{bad:?}"
        );
    }
    let mut extra = Command::get_file("C:\\x.txt");
    extra.params.push(extra.params[0].clone());
    assert!(check_rendered(&extra).is_err());
    assert!(check_rendered(&Command::get_file("C:\\Program Files\\a (1)\\b.exe")).is_ok());
    // Names Windows allows, attackers choose, and no shell reads in a GetFile path.
    for ok in [
        "C:\\Users\\a\\it's {setup} [1] 100% a&b x$.exe",
        "C:\\Users\\a\\Invoice \u{2013} Bob\u{2019}s.exe",
    ] {
        assert!(check_rendered(&Command::get_file(ok)).is_ok(), "{ok:?}");
    }
}
