//! A WASI command, not a wasmgate plugin: a valid component of the wrong world, which a worker
//! host must refuse to load.

fn main() {
    println!("hi");
}
