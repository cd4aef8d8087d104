use super::*;
use crate::alerts::render::tests::alert;

#[test]
fn the_bundled_playbooks_load() {
    let p = Playbooks::bundled().unwrap();
    assert!(p.all().len() >= 3);
}

#[test]
fn rules_pick_the_first_match_and_render_validated_values() {
    let p = Playbooks::bundled().unwrap();
    let a = alert("Malware", &[("file_path", "C:\\Users\\a\\x.exe")]);
    let pb = p.select(&a).unwrap();
    assert_eq!(pb.name, "malware-file");
    let cmds = pb.render(&a).unwrap();
    assert!(
        cmds.iter()
            .any(|c| c.kind == CommandType::GetFile
                && c.param("Path") == Some("C:\\Users\\a\\x.exe"))
    );
    let mut none = alert("Nothing", &[]);
    none.severity = "Informational".into();
    assert_eq!(p.select(&none).unwrap_err().code, "no_playbook");
    let mut named = alert("Nothing", &[]);
    named.playbook = Some("nope".into());
    assert_eq!(p.select(&named).unwrap_err().code, "unknown_playbook");
}

#[test]
fn a_refused_defender_value_is_dropped_and_the_alert_still_runs() {
    let p = Playbooks::bundled().unwrap();
    // A name Windows itself refuses (made through \\?\ by an attacker): malware-file cannot
    // fetch it, so the alert runs the next playbook that fits, triage, and says why.
    let mut a = alert("Malware", &[("file_path", "C:\\Users\\a\\NUL.exe")]);
    a.format = AlertFormat::Defender;
    let plan = p.plan(&a).unwrap();
    assert_eq!(plan.playbook.name, "triage");
    assert_eq!(plan.refused.len(), 1);
    assert_eq!(
        (
            plan.refused[0].name.as_str(),
            plan.refused[0].playbook.as_str()
        ),
        ("file_path", "malware-file")
    );
    assert!(
        plan.refused[0].reason.contains("DOS device"),
        "{:?}",
        plan.refused
    );
    // A legal name with characters a script argument could not carry is collected as it is.
    let odd = "C:\\Users\\a\\Bob\u{2019}s it's {setup} 100% a&b.exe";
    let mut a = alert("Malware", &[("file_path", odd)]);
    a.format = AlertFormat::Defender;
    let plan = p.plan(&a).unwrap();
    assert_eq!(plan.playbook.name, "malware-file");
    assert!(plan.refused.is_empty());
    assert!(plan.commands.iter().any(|c| c.param("Path") == Some(odd)));
    // The sender of an lr.alert/v1 alert chose its values: a refused one refuses the alert.
    let native = alert("Malware", &[("file_path", "C:\\Users\\a\\NUL.exe")]);
    assert_eq!(p.plan(&native).unwrap_err().code, "invalid_parameter");
}

#[test]
fn placeholder_values_cannot_smuggle_commands_or_paths() {
    for bad in [
        "C:\\a\\..\\..\\Windows\\System32\\config\\SAM",
        "\\\\evil\\share\\x",
        "C:\\a\";Remove-Item C:\\ -Recurse;\"",
        "C:\\a|calc.exe",
        "C:\\a\\*",
        "C:/a/b",
        "C:\\a\\b\u{0}c",
        "relative\\path",
        "C:\\a\\\\b",
        "C:\\a\\b.",
        "\\\\?\\C:\\x",
        "C:\\a\\$env:TEMP",
    ] {
        assert!(PlaceholderKind::WindowsPath.check(bad).is_err(), "{bad:?}");
    }
    assert!(
        PlaceholderKind::WindowsPath
            .check("C:\\Program Files\\App\\app.exe")
            .is_ok()
    );
    for bad in ["-x; rm", "a b", "$(calc)", "'x'", ""] {
        assert!(PlaceholderKind::ScriptArg.check(bad).is_err(), "{bad:?}");
    }
    assert!(PlaceholderKind::ScriptArg.check("OfficeClickToRun").is_ok());
}

#[test]
fn invalid_playbooks_name_the_playbook_and_field() {
    let undeclared = r#"
[[playbooks]]
name = "bad"
[[playbooks.commands]]
type = "GetFile"
path = "{file_path}"
"#;
    let e = Playbooks::from_toml(undeclared).unwrap_err();
    assert_eq!(
        (e.playbook.as_str(), e.field.as_str()),
        ("bad", "commands[0]")
    );
    let bad_script = r#"
[[playbooks]]
name = "x"
[[playbooks.commands]]
type = "RunScript"
script = "../evil.ps1"
"#;
    let e = Playbooks::from_toml(bad_script).unwrap_err();
    assert!(e.to_string().contains("playbook x: commands[0]"), "{e}");
    let unknown_type = r#"
[[playbooks]]
name = "x"
[[playbooks.commands]]
type = "RunShell"
cmd = "calc"
"#;
    assert!(Playbooks::from_toml(unknown_type).is_err());
}

#[test]
fn no_script_value_carries_braces() {
    // A file may be named with braces: a GetFile path takes it literally (rendering is one
    // pass, nothing in a value is expanded), a script argument does not take it at all.
    for path in [
        "C:\\Users\\a\\{file_path}.exe",
        "C:\\Temp\\}{",
        "C:\\a\\{x}",
    ] {
        assert!(PlaceholderKind::WindowsPath.check(path).is_ok(), "{path:?}");
        assert!(
            crate::alerts::kinds::check_path_argument(path).is_err(),
            "{path:?}"
        );
    }
    for kind in [
        PlaceholderKind::ScriptArg,
        PlaceholderKind::ProcessName,
        PlaceholderKind::Sha256,
    ] {
        assert!(kind.check("{mode}").is_err());
    }
}

#[test]
fn dos_device_names_are_refused_in_every_kind() {
    for bad in [
        "C:\\Users\\a\\NUL.txt",
        "C:\\CON",
        "C:\\Users\\a\\com1",
        "C:\\Temp\\con .log",
        "C:\\Temp\\aux.tar.gz",
        "C:\\Users\\LPT3\\x.exe",
        "C:\\Temp\\LPT\u{b9}.txt",
        "C:\\Temp\\Com\u{b2}",
        "C:\\Temp\\COM0.bin",
        "C:\\Temp\\prn.docx.exe",
    ] {
        assert!(PlaceholderKind::WindowsPath.check(bad).is_err(), "{bad:?}");
    }
    for ok in [
        "C:\\Temp\\CONSOLE.txt",
        "C:\\Temp\\com10",
        "C:\\Temp\\nul_x.txt",
        "C:\\Temp\\x.con",
        "C:\\Temp\\auxiliary\\x.exe",
    ] {
        assert!(PlaceholderKind::WindowsPath.check(ok).is_ok(), "{ok:?}");
    }
    for bad in ["NUL", "con.exe", "COM9", "Lpt1", "aux.x"] {
        assert!(PlaceholderKind::ProcessName.check(bad).is_err(), "{bad:?}");
        assert!(PlaceholderKind::ScriptArg.check(bad).is_err(), "{bad:?}");
    }
    assert!(PlaceholderKind::ProcessName.check("conhost").is_ok());
    assert!(PlaceholderKind::ScriptArg.check("Console").is_ok());
}

#[test]
fn dot_dot_leading_dashes_and_streams_are_refused() {
    for bad in ["..", "a..b", ".hidden", "-Force", "lsass."] {
        assert!(PlaceholderKind::ProcessName.check(bad).is_err(), "{bad:?}");
    }
    for bad in ["..", "a..b", "x:y", "C:evil", "a.txt:stream", "-Recurse"] {
        assert!(PlaceholderKind::ScriptArg.check(bad).is_err(), "{bad:?}");
    }
    assert!(
        PlaceholderKind::WindowsPath
            .check("C:\\a\\b.txt:evil")
            .is_err()
    );
    assert!(PlaceholderKind::ProcessName.check("svc.host-1_x").is_ok());
    assert!(PlaceholderKind::ScriptArg.check("Level=3,Quick").is_ok());
}

#[test]
fn the_bundled_memory_dump_refuses_device_names_and_traversal() {
    let p = Playbooks::bundled().unwrap();
    for bad in ["NUL", "..", "a..b", "-Force", "COM1.exe"] {
        let a = alert("CredentialAccess", &[("process_name", bad)]);
        let pb = p.select(&a).unwrap();
        assert_eq!(pb.name, "memory-dump");
        assert_eq!(
            pb.render(&a).unwrap_err().code,
            "invalid_parameter",
            "{bad:?}"
        );
    }
}

#[test]
fn a_playbook_hash_is_stable_and_tells_playbooks_apart() {
    let p = Playbooks::bundled().unwrap();
    let hashes: Vec<String> = p.all().iter().map(Playbook::sha256).collect();
    assert!(hashes.iter().all(|h| h.len() == 64));
    let again = Playbooks::bundled().unwrap();
    assert_eq!(again.all()[0].sha256(), hashes[0]);
    let distinct: std::collections::BTreeSet<_> = hashes.iter().collect();
    assert_eq!(distinct.len(), hashes.len());
    let mut changed = p.all()[0].clone();
    changed.deadline_minutes += 1;
    assert_ne!(changed.sha256(), hashes[0]);
}

#[test]
fn every_library_file_a_command_names_is_declared() {
    let undeclared = r#"
[[playbooks]]
name = "dump"
[[playbooks.commands]]
type = "PutFile"
file = "procdump64.exe"
[[playbooks.commands]]
type = "RunScript"
script = "dump.ps1"
"#;
    let e = Playbooks::from_toml(undeclared).unwrap_err();
    assert_eq!(
        (e.playbook.as_str(), e.field.as_str()),
        ("dump", "commands[0]")
    );
    assert!(
        e.problem.contains("procdump64.exe") && e.problem.contains("external = true"),
        "{e}"
    );

    let declared = format!(
        "[[library_files]]\nname = \"ProcDump64.exe\"\nexternal = true\n\n[[library_files]]\nname = \"dump.ps1\"\n{undeclared}"
    );
    let p = Playbooks::from_toml(&declared).expect("names match without regard to case");
    assert_eq!(p.library_files().len(), 2);
    assert_eq!(p.library_folder(), "library");

    let e = Playbooks::from_toml(&format!(
        "[[library_files]]\nname = \"dump.ps1\"\n[[library_files]]\nname = \"DUMP.ps1\"\n{declared}"
    ))
    .unwrap_err();
    assert_eq!(e.field, "library_files[1]", "{e}");

    for folder in ["../up", "/abs", "a//b", ".hidden", "a b"] {
        let e =
            Playbooks::from_toml(&format!("library_folder = {folder:?}\n{declared}")).unwrap_err();
        assert_eq!(e.field, "library_folder", "{folder}: {e}");
    }
    assert!(
        Playbooks::from_toml(&format!("library_folder = \"tools/lr-1.2\"\n{declared}")).is_ok()
    );

    let both = "[[library_files]]\nname = \"x.exe\"\nexternal = true\nreplace_unmanaged = true\n[[playbooks]]\nname = \"p\"\n[[playbooks.commands]]\ntype = \"PutFile\"\nfile = \"x.exe\"\n";
    assert!(
        Playbooks::from_toml(both)
            .unwrap_err()
            .problem
            .contains("replace_unmanaged")
    );
}

#[test]
fn the_bundled_playbooks_ship_exactly_the_library_files_they_declare() {
    use crate::library::bundle::BUNDLED_LIBRARY;
    let p = Playbooks::bundled().unwrap();
    let bundle =
        crate::library::Bundle::bundled(p.library_files()).expect("every declared file is shipped");
    for f in p.library_files() {
        assert!(!f.external, "{} is shipped, not external", f.name);
        assert!(
            bundle
                .get(&f.name)
                .and_then(|b| b.content.as_ref())
                .is_some_and(|c| !c.is_empty())
        );
    }
    for (name, _) in BUNDLED_LIBRARY {
        assert!(
            p.library_files().iter().any(|f| f.name == *name),
            "shared/playbooks/library/{name} is shipped but not declared"
        );
    }
    let used: std::collections::BTreeSet<String> = p
        .all()
        .iter()
        .flat_map(|pb| pb.commands.iter())
        .filter_map(|c| match c {
            CommandTemplate::RunScript { script, .. } => Some(script.clone()),
            CommandTemplate::PutFile { file } => Some(file.clone()),
            CommandTemplate::GetFile { .. } => None,
        })
        .collect();
    let declared: std::collections::BTreeSet<String> =
        p.library_files().iter().map(|f| f.name.clone()).collect();
    assert_eq!(used, declared, "no declared file is unused");
}
