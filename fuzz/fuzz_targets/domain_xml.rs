//! A domain's XML as `dmore libvirt xml` and the hook read it: any text into the patch and the
//! reader; a patched document reads back as dmore's and patching it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libvirt::{patch_domain, read_patched, DomainDir};

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let _ = read_patched(xml);
    let dir = DomainDir::new("/run/dmore/f");
    if let Ok(once) = patch_domain(xml, &dir) {
        assert_eq!(patch_domain(&once, &dir).unwrap(), once);
        assert_eq!(read_patched(&once).unwrap().map(|p| p.dir), Some(dir));
    }
});
