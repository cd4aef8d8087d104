//! Alert parsing and playbook rendering must never panic, whatever arrives on the queue.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    if let Ok(alert) = shared::alerts::parse(&body)
        && let Ok(playbooks) = shared::alerts::playbook::Playbooks::bundled()
        && let Ok(playbook) = playbooks.select(&alert)
    {
        let _ = playbook.render(&alert);
    }
});
