//! Host loops written once in portable Rust and compiled again for the widest vector
//! instructions the CPU has, chosen at run time: the CPU backend's row kernels, and the trim
//! search's host pass that every backend's ranks go through.

/// Defines `$vis fn $name(args) [-> Ret]` running `$portable(args)` compiled for AVX2 where
/// the CPU has it (detected at run time), else as built. The `avx512` form tries AVX-512F first:
/// for loops heavy enough that eight or sixteen lanes pay, where the same operations give the
/// same results at every width.
macro_rules! with_wide_simd {
    ($(#[$doc:meta])* $vis:vis avx512 fn $name:ident => $portable:ident($($arg:ident: $ty:ty),*)
        $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            with_wide_simd!(@try "avx512f" $portable($($arg: $ty),*) $(-> $ret)?);
            with_wide_simd!(@try "avx2" $portable($($arg: $ty),*) $(-> $ret)?);
            $portable($($arg),*)
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident => $portable:ident($($arg:ident: $ty:ty),*)
        $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            with_wide_simd!(@try "avx2" $portable($($arg: $ty),*) $(-> $ret)?);
            $portable($($arg),*)
        }
    };
    // Returns `$portable(args)` compiled with `$feature` where the CPU has it.
    (@try $feature:tt $portable:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!($feature) {
            #[target_feature(enable = $feature)]
            unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                $portable($($arg),*)
            }
            // SAFETY: the CPU has the feature (checked above).
            return unsafe { wide($($arg),*) };
        }
    };
}
pub(crate) use with_wide_simd;
