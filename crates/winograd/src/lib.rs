//! Winograd minimal filtering F(m, 3) for 3x3 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Transform matrices and SIMD tile transforms land here; the crate knows no graph types.
