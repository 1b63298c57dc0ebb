//! The attention/pooling valid mask of a batch, from its history item ids.

/// valid (B, T) = 1 where the token is real, 0 where it is padding: history token `j` of
/// sample `b` is real when `hist_item[b, j] != 0`; the target token (`T - 1 = L`) always
/// is.  hist_item (B, L), T = L + 1. Overwrites `valid`.
pub fn valid_mask(valid: &mut [u32], hist_item: &[u32], b: usize, l: usize) {
    let t = l + 1;
    for bi in 0..b {
        for j in 0..l {
            valid[bi * t + j] = (hist_item[bi * l + j] != 0) as u32;
        }
        valid[bi * t + l] = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_invalid_and_the_target_always_valid() {
        let mut valid = vec![9; 8];
        valid_mask(&mut valid, &[0, 0, 5, 0, 7, 2], 2, 3);
        assert_eq!(valid, [0, 0, 1, 1, 0, 1, 1, 1]);
    }
}
