//! state.json bytes -> a container's record: never a panic, and a record
//! that parses also serialises and parses back to the same status inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = serde_json::from_slice::<amphi_core::state::ContainerState>(data) {
        let again = serde_json::to_vec(&state).expect("a parsed state serialises");
        let back: amphi_core::state::ContainerState =
            serde_json::from_slice(&again).expect("and parses back");
        assert_eq!(back.pid, state.pid);
        assert_eq!(back.id, state.id);
        let _ = state.oci_state(amphi_core::state::Status::Stopped);
        // The config is kept as JSON and parsed only when asked for.
        let _ = state.hooks();
        let _ = state.spec();
    }
});
