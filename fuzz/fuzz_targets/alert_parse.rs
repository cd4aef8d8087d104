//! Alert parsing and playbook rendering must never panic, whatever arrives on the queue, and every
//! command a render produces must pass the final check (a render that the final check refuses,
//! `unsafe_render`, is a bug in rendering).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::alerts::render::check_rendered;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    if let Ok(alert) = shared::alerts::parse(&body)
        && let Ok(playbooks) = shared::alerts::playbook::Playbooks::bundled()
        && let Ok(playbook) = playbooks.select(&alert)
    {
        match playbook.render(&alert) {
            Ok(commands) => {
                for c in &commands {
                    if let Err(problem) = check_rendered(c) {
                        panic!("rendered {c:?} fails the final check: {problem}");
                    }
                }
            }
            Err(e) => assert_ne!(e.code, "unsafe_render", "{e}"),
        }
    }
});
