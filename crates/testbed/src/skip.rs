//! Skipping a test whose environment is missing — never silently on CI.
//!
//! Off CI a test that cannot run here (not root: no network namespaces, no `TCP_REPAIR`) says
//! so and passes, so the suite stays usable on a developer's laptop. On CI (`CI=true`, which
//! runs the suite as root after `.ci/setup` installed everything) the same situation is a
//! broken set-up that would hide every test behind it: the test fails instead.

/// Whether this run is CI's, where nothing may skip.
pub fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true")
}

/// Notes that `test` cannot run here, because `why`; on CI, panics with the same words.
pub fn skip(test: &str, why: &str) {
    assert!(
        !on_ci(),
        "{test} cannot run on CI: {why} (CI=true: no test may skip)"
    );
    println!("{test}: skipped: {why}");
}
