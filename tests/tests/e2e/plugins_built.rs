//! The build script produced every test plugin, and each one is a component.

use wasmgate_tests::plugins;

/// A component's preamble: `\0asm`, then component-model version 0x0d, layer 1.
const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

#[test]
fn every_plugin_is_a_component() {
    for path in [
        plugins::COMMANDS,
        plugins::ECHO,
        plugins::MISBEHAVE,
        plugins::NOT_A_PLUGIN,
    ] {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            bytes.starts_with(&COMPONENT_MAGIC),
            "{path} does not start with the component preamble"
        );
    }
}
