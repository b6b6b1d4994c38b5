//! A source bundle or file image as an agent unpacks it (as root): any bytes unpack or fail,
//! and nothing lands outside the directory, whatever the entries say.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let parent = tempfile::tempdir().expect("scratch directory");
    let dir = parent.path().join("in");
    std::fs::create_dir(&dir).expect("unpack directory");
    let _ = mirari_build::archive::unpack(bytes, &dir);
    let beside: Vec<_> = std::fs::read_dir(parent.path()).expect("scratch").flatten().map(|e| e.file_name()).collect();
    assert_eq!(beside, ["in"], "an entry landed outside the directory");
});
