#!/usr/bin/env python3
"""Fits `HALF_SCALED_ERFC_FIT` in src/backend/cpu/activation.rs: the GELU slope's lower tail
`Q(t) = ½·erfc(a)·e^{a²}/t` with `a = 2(1/t − 1)`, `t ∈ (0, 1]`, as a degree-10 polynomial in t.

Least squares in relative error at 4 000 Chebyshev nodes against SciPy's `erfcx`, converted to
the power basis and rounded to f32. Prints the maximum relative error of the f64 fit and of the
f32 coefficients evaluated by Horner's rule in f32, then the coefficients (t⁰ first), as they
appear in the Rust constant.

    tools/.venv/bin/python tools/fit_gelu_slope.py
"""

import numpy as np
import numpy.polynomial.chebyshev as cheb
import numpy.polynomial.polynomial as poly
from scipy.special import erfcx

NODES = 4000
DEGREE = 10


def q(t):
    return 0.5 * erfcx(2 * (1 / t - 1)) / t


def main():
    k = np.arange(NODES)
    t = 0.5 * (1 - np.cos(np.pi * (k + 0.5) / NODES))  # Chebyshev nodes mapped to (0, 1)
    f = q(t)
    series = cheb.chebfit(2 * t - 1, f, DEGREE, w=1 / f)
    # Power basis in t: substitute x = 2t − 1 into the Chebyshev series.
    power = np.zeros(1)
    x_power = np.array([1.0])
    for c in cheb.cheb2poly(series):
        power = poly.polyadd(power, c * x_power)
        x_power = poly.polymul(x_power, [-1.0, 2.0])
    coefficients = power.astype(np.float32)

    ts = np.linspace(1e-7, 1, 1_000_001)
    t32 = ts.astype(np.float32).astype(np.float64)
    horner = np.zeros(len(ts))
    for c in coefficients[::-1]:
        horner = np.float32(horner * t32 + np.float64(c)).astype(np.float64)
    print("f64 fit", np.abs(poly.polyval(ts, power) / q(ts) - 1).max(),
          "f32 horner", np.abs(horner / q(t32) - 1).max())
    for c in coefficients:
        print(np.format_float_positional(c, unique=True) + ",")


if __name__ == "__main__":
    main()
