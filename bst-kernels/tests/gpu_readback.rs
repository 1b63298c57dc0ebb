//! `Readback`: one staging buffer reused across reads of changing sizes (larger, then
//! smaller, then empty), in its own submit or in the submit of the work it reads; and
//! the per-thread count of the bytes the buffer helpers create.

mod common;

use bst_kernels::gpu::{Readback, TensorRef, bytes_created_on_this_thread};
use common::gpu;

#[test]
fn one_staging_buffer_reads_every_size_in_turn() {
    let Some(ctx) = gpu() else { return };
    let data: Vec<u32> = (0..300).map(|i| i * 7 + 1).collect();
    let buf = ctx.storage_buffer("data", &data);
    let mut r = Readback::new("test readback");
    assert_eq!(r.capacity_bytes(), 0);
    // (offset, len): grows to 200 words, then smaller reads must not see stale words.
    for (off, len) in [(0, 3), (5, 200), (1, 7), (0, 0), (100, 200), (299, 1)] {
        let got: Vec<u32> = r
            .read(ctx, TensorRef::new(&buf, off as u32), len)
            .expect("read");
        assert_eq!(got, data[off..off + len], "read of {len} words at {off}");
    }
    assert_eq!(
        r.capacity_bytes(),
        4 * 200,
        "grown to the largest read only"
    );

    // Recorded in the encoder of the work it reads: the copy sees that work.
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.clear_buffer(&buf, 0, Some(64));
    r.copy(ctx, &mut encoder, TensorRef::new(&buf, 10), 10)
        .expect("copy");
    ctx.queue.submit([encoder.finish()]);
    let mut got = [1u32; 10];
    r.finish_into(ctx, &mut got).expect("finish");
    let mut want = [0u32; 10];
    want[6..].copy_from_slice(&data[16..20]);
    assert_eq!(got, want, "words 10..16 cleared in the same submit");

    let e = r
        .finish::<u32>(ctx)
        .expect_err("no copy pending")
        .to_string();
    assert!(e.contains("without a copy"), "{e}");
    let e = r
        .read::<u32>(ctx, TensorRef::new(&buf, 290), 11)
        .expect_err("past the end")
        .to_string();
    assert!(e.contains("past the end"), "{e}");
    ctx.check().expect("no wgpu error");
}

#[test]
fn buffer_helpers_count_the_bytes_they_create_on_this_thread() {
    let Some(ctx) = gpu() else { return };
    let before = bytes_created_on_this_thread();
    let _a = ctx.storage_buffer_zeroed("a", 10);
    let _b = ctx.storage_buffer("b", &[1u8, 2, 3]); // padded to 4 bytes
    let _u = ctx.uniform_slots_buffer("u", &[[0u32; 4]; 2]); // two 256-byte slots
    let mut r = Readback::with_capacity(ctx, "r", 5);
    assert_eq!(bytes_created_on_this_thread() - before, 40 + 4 + 512 + 20);
    // Reads within the capacity create nothing.
    let _ = r.read::<u32>(ctx, TensorRef::whole(&_a), 5).expect("read");
    assert_eq!(bytes_created_on_this_thread() - before, 40 + 4 + 512 + 20);
    // Another thread's buffers are not counted here.
    std::thread::scope(|s| {
        s.spawn(|| ctx.storage_buffer_zeroed("elsewhere", 1000));
    });
    assert_eq!(bytes_created_on_this_thread() - before, 576);
}
