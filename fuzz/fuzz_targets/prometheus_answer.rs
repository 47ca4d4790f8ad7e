#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    custom_metrics_adapter::fuzz::prometheus_answer(data);
});
