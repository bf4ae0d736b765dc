//! End to end: [`orchestrate::comigrate`] moves a VM and its console between two
//! network-namespace hosts, with real QEMUs and real consoles (each run in-process on a
//! thread inside its host's namespace), while a viewer on a third host stays connected: keys
//! it types after the move reach the guest on the destination through the same connection.
//!
//! Needs root (namespaces, the moving service address, TCP_REPAIR) and QEMU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use console::back::LinkConfig;
use console::control::{request, Command as Ctl};
use console::front::{Access, ConsoleConfig, Exit, MigrationConfig, PeerKey};
use guest::report::Report;
use orchestrate::{Plan, Progress};
use rfb::ClientMessage;
use testbed::hosts::{Host, Mode, Testbed};
use testbed::qemu::Qemu;
use testbed::service::{ServiceAddr, DEFAULT_OCTET, INTERFACE};
use tokio::sync::oneshot;

/// Keys typed before and after the move (each a press and a release).
const KEYS: u64 = 5;
/// A generous limit for each wait (the machine is slow and shared; nothing is timed).
const PATIENCE: Duration = Duration::from_secs(30);

/// A console running on its own thread inside a host's namespace; stopped and joined on drop.
struct ConsoleThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Option<Result<Exit, String>>>>,
}

impl ConsoleThread {
    fn start(host: &Host, config: ConsoleConfig) -> ConsoleThread {
        let (stop, stopped) = oneshot::channel::<()>();
        let host = host.clone();
        let thread = std::thread::spawn(move || {
            host.run(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the console");
                rt.block_on(async {
                    tokio::select! {
                        r = console::front::run(config) => Some(r.map_err(|e| format!("{e:#}"))),
                        _ = stopped => None,
                    }
                })
            })
            .expect("a thread in the host's namespace")
        });
        ConsoleThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits until the console ends by itself; its exit.
    async fn ended(&mut self) -> Result<Exit, String> {
        let deadline = Instant::now() + PATIENCE;
        while !self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            assert!(Instant::now() < deadline, "the console did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .expect("the console thread panicked")
            .expect("ended by itself, not stopped")
    }
}

impl Drop for ConsoleThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn console_config(
    vm: &Qemu,
    listen: SocketAddr,
    control: &Path,
    incoming: Option<SocketAddr>,
) -> ConsoleConfig {
    ConsoleConfig {
        link: LinkConfig::new(vm.vnc_path(), vm.qmp2_path().expect("a console monitor")),
        listen,
        access: Access {
            password: None,
            view_only_password: None,
            all_view_only: false,
            insecure_no_auth: true,
        },
        name: "e2e".into(),
        control: Some(control.to_path_buf()),
        restore_from: None,
        migration: Some(MigrationConfig {
            key: PeerKey {
                psk: b"e2e shared secret".to_vec(),
                vm_id: "vm1".into(),
            },
            service_interface: Some(INTERFACE.into()),
            incoming,
            announce_listen: None,
            peers: vec![],
        }),
        qemu_wait: console::front::DEFAULT_QEMU_WAIT,
        lossy: false,
        serial: None,
        gateway: None,
    }
}

/// A QEMU for the test guest with a second monitor for the console and a third, `orch.sock`,
/// for the orchestrator (the harness holds the first).
async fn launch(host: &Host, incoming: bool) -> (Qemu, PathBuf) {
    let mut cfg = host.qemu_config("vm");
    cfg.incoming = incoming;
    cfg.extra_qmp = true;
    cfg.key_delay_ms = Some(0);
    let orch = cfg.runtime_dir.join("orch.sock");
    cfg.extra_args = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", orch.display()).into(),
    ];
    let mut vm = Qemu::launch(cfg).await.expect("QEMU starts");
    if !incoming {
        vm.wait_ready(PATIENCE).await.expect("the guest boots");
    }
    (vm, orch)
}

/// Polls the console's control socket until it answers `version`.
async fn until_up(control: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while request(control, &Ctl::Version).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "console {control:?} never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the guest's reports until its key count reaches `count`.
async fn until_keys(vm: &mut Qemu, count: u64) {
    loop {
        match vm.serial().next(PATIENCE, "key reports").await {
            Ok(Report::Key { count: c, .. }) if c >= count => return,
            Ok(_) => {}
            Err(e) => panic!("waiting for key {count}: {e}"),
        }
    }
}

fn keys(n: u64) -> Vec<ClientMessage> {
    (0..n)
        .flat_map(|i| {
            let keysym = 0x61 + u32::try_from(i % 26).unwrap_or(0);
            [true, false].map(|down| ClientMessage::KeyEvent { down, keysym })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_and_its_console_move_and_the_viewer_keeps_typing() {
    move_with_a_viewer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_the_switchover_for_the_console_moves_it_too() {
    move_with_a_viewer(true).await;
}

/// Boots a VM with its console on A, connects a viewer from the client host, types, runs
/// the co-migration to B, and types again on the same connection.
async fn move_with_a_viewer(hold_switchover: bool) {
    let bed = Testbed::create().expect("test hosts");
    assert_eq!(
        bed.mode(),
        Mode::Namespaces,
        "this test needs network-namespace hosts: run it as root"
    );
    let service = ServiceAddr::new(&bed, DEFAULT_OCTET).expect("a service address");
    service.add(bed.a()).expect("the service address on A");
    let listen = SocketAddr::from((service.addr(), 5900));

    let (mut vm_a, qmp_a) = launch(bed.a(), false).await;
    let ctl_a = bed.a().runtime_dir().join("console.ctl");
    let mut console_a = ConsoleThread::start(bed.a(), console_config(&vm_a, listen, &ctl_a, None));
    until_up(&ctl_a).await;

    let stream = scenarios::typist::connect_from(bed.client(), listen)
        .await
        .expect("the viewer connects");
    let (_, mut reader, mut writer) = vnc::client::connect(
        stream,
        scenarios::typist::plain_client_config(),
        &vnc::client::Setup::default(),
    )
    .await
    .expect("RFB handshake with the console");
    let drain = tokio::spawn(async move { while reader.read_message().await.is_ok() {} });
    writer.send_all(&keys(KEYS)).await.expect("typing on A");
    until_keys(&mut vm_a, 2 * KEYS).await;

    let (mut vm_b, qmp_b) = launch(bed.b(), true).await;
    let ctl_b = bed.b().runtime_dir().join("console.ctl");
    let incoming = SocketAddr::from((bed.b().ip(), 4700));
    let _console_b = ConsoleThread::start(
        bed.b(),
        console_config(&vm_b, listen, &ctl_b, Some(incoming)),
    );
    until_up(&ctl_b).await;

    let plan = Plan {
        source_qmp: qmp_a,
        dest_qmp: qmp_b,
        incoming_uri: bed.b().incoming_uri().expect("a port on B"),
        source_console: ctl_a,
        dest_console: ctl_b,
        dest_console_addr: incoming,
        hold_switchover,
        events: true,
        timeout: PATIENCE,
        quit_source: true,
    };
    let mut heard = Vec::new();
    let timeline = orchestrate::comigrate(&plan, |p| heard.push(p.clone()))
        .await
        .expect("the co-migration");
    println!("{}", timeline.render());

    assert_eq!(timeline.viewers_moved, Some(1), "{timeline:?}");
    assert!(timeline.state_bytes.unwrap_or(0) > 0, "{timeline:?}");
    assert!(timeline.vm_downtime_ms.is_some(), "{timeline:?}");
    assert_eq!(timeline.held_switchover, hold_switchover, "{timeline:?}");
    assert_eq!(heard.first(), Some(&Progress::Preparing));
    assert_eq!(heard.last(), Some(&Progress::Done));
    assert_eq!(
        console_a.ended().await,
        Ok(Exit::HandedOver),
        "the source console hands over and ends"
    );
    assert!(
        service.is_on(bed.b()).expect("ip on B") && !service.is_on(bed.a()).expect("ip on A"),
        "the service address moved to B"
    );

    // The same viewer connection, now served by B: its keys reach the guest there (the key
    // count lives in the guest, so it continues from A's).
    writer.send_all(&keys(KEYS)).await.expect("typing on B");
    until_keys(&mut vm_b, 4 * KEYS).await;
    assert!(!drain.is_finished(), "the viewer's connection was kept");
    drain.abort();
}
