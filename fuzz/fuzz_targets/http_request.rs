//! The gateway's HTTP request head (what a browser, or anyone, sends its web listener): the
//! head's end, its parse, and the file its path names. Must refuse, never panic, and never
//! name a file outside the web root.
#![no_main]

use std::path::{Component, Path};

use gateway::http::{head_end, resolve, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(end)) = head_end(data) else {
        return;
    };
    let Ok(request) = Request::parse(&data[..end]) else {
        return;
    };
    let _ = request.query_param("token");
    let _ = request.header_lists("connection", "upgrade");
    let root = Path::new("/srv/www");
    if let Some(file) = resolve(root, &request.path, "vnc.html") {
        let rel = file.strip_prefix(root).expect("a file outside the root");
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{file:?}"
        );
    }
});
