//! x86-64 kernel sets. Each module holds a token, its vector type over `std::arch`
//! intrinsics, and the `#[target_feature]` trampoline [`crate::dispatch!`] enters.

pub mod avx2;
pub mod avx512;

pub use avx2::Avx2;
pub use avx512::Avx512;
