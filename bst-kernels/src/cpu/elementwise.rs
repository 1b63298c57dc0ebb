//! Element-wise ops without parameters, as the spec reads them: the residual sum and the
//! fill. (LeakyReLU, also element-wise, is [`crate::cpu::activation`].)

/// out (n) = x (n) + y (n)
pub fn add(out: &mut [f32], x: &[f32], y: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
        *o = a + b;
    }
}

/// out (n) = value
pub fn fill(out: &mut [f32], value: f32) {
    for o in out.iter_mut() {
        *o = value;
    }
}
