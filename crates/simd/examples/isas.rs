//! Prints the kernel sets (`--isa` / `REPVGG_ISA` values) this CPU runs, best first, one
//! per line: what CI runs the suites under. The sets the CPU lacks are named on stderr,
//! with what they need; no emulator in reach executes AVX-512, so those are compiled and
//! linted only.
//!
//! ```sh
//! cargo run -q --release -p repvgg-simd --example isas
//! ```

use repvgg_simd::Isa;

fn main() {
    let mut out = String::new();
    for isa in Isa::ALL {
        let missing = isa.missing_features();
        if missing.is_empty() {
            out += &format!("{isa}\n");
        } else {
            eprintln!(
                "isas: this CPU lacks {}: the {isa} kernels are compiled and linted, not run",
                missing.join(", ")
            );
        }
    }
    print!("{out}");
}
