//! `dmore console`: the arguments of one console process, turned into a
//! [`console::front::ConsoleConfig`].

use anyhow::Context as _;
use console::back::LinkConfig;
use console::front::{Access, ConsoleConfig, Exit, GatewayConfig, MigrationConfig, PeerKey};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Run the console of one VM: viewers connect here, QEMU is reached through two unix sockets.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  qemu-system-x86_64 ... -k de \\
      -vnc unix:/run/vm1/vnc.sock,key-delay-ms=0,lock-key-sync=off \\
      -qmp unix:/run/vm1/console-qmp.sock,server=on,wait=off
  DMORE_VNC_PASSWORD=secret dmore console --vnc-socket /run/vm1/vnc.sock --keymap de \\
      --qmp-socket /run/vm1/console-qmp.sock --listen 0.0.0.0:5901 \\
      --view-only-password-file /etc/dmore/vm1.viewonly --control /run/vm1/console.ctl

QEMU's key-delay-ms=0 lets dmore pace keys itself; lock-key-sync=off keeps QEMU from
injecting Caps Lock presses. If QEMU runs with -k LAYOUT, give dmore --keymap LAYOUT too:
keys dmore sends through QMP then get the same key numbers QEMU's VNC server gives them. The QMP monitor is the console's own (a second -qmp).
Passwords come from files or DMORE_VNC_PASSWORD, never from the command line.
`echo status | socat - UNIX:/run/vm1/console.ctl` prints the console's state as JSON.
A new console started with --restore-from /run/vm1/console.ctl freezes that console and
takes over its viewers' connections, held input and screen.

Moving with the VM (co-migration): give both consoles the same --peer-key-file. On the
destination host, next to the QEMU started with -incoming defer:
  dmore console --vnc-socket /run/vm1/vnc.sock --qmp-socket /run/vm1/console-qmp.sock \
      --listen 10.0.0.50:5900 --service-interface eth0 --control /run/vm1/console.ctl \
      --peer-key-file /etc/dmore/vm1.key --incoming 10.0.0.2:4700
then `dmore migrate ... --dest-console-addr 10.0.0.2:4700` migrates the VM (or a manager such
as libvirt does, and the source console, given --peer 10.0.0.2:4700, finds its peer); the
source console freezes when its VM stops for the switchover, the destination console takes
over when its VM runs. With --service-interface the --listen address is a service address
that moves with the VM (both hosts on one L2 segment, gratuitous ARP allowed): the
viewers' TCP connections move too (TCP_REPAIR) and viewers notice nothing. That mode needs
CAP_NET_ADMIN and CAP_NET_RAW, and only those: run the console as its own user with
  setpriv --reuid=dmore --regid=dmore --init-groups --inh-caps=+net_admin,+net_raw \
      --ambient-caps=+net_admin,+net_raw -- dmore console ...
Whatever it starts with, the console keeps only the capabilities its mode needs.
Without a password the console refuses to start unless --insecure-no-auth.")]
pub struct ConsoleArgs {
    /// QEMU's VNC server socket (`-vnc unix:PATH,key-delay-ms=0,lock-key-sync=off`).
    #[arg(long, value_name = "PATH")]
    vnc_socket: PathBuf,
    /// QEMU's keyboard layout: the same value as its `-k` (a name in /usr/share/qemu/keymaps
    /// or a file); absent when QEMU has no `-k` (then the viewer's keycodes, else en-us).
    #[arg(long, value_name = "LAYOUT")]
    keymap: Option<String>,
    /// A QMP monitor socket for the console alone (`-qmp unix:PATH,server=on,wait=off`).
    #[arg(long, value_name = "PATH")]
    qmp_socket: PathBuf,
    /// TCP address viewers connect to (port 0 picks one; the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// File holding the viewers' full-access password (else env DMORE_VNC_PASSWORD). A
    /// console refuses to start with no password unless --insecure-no-auth.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Let viewers connect with no password: only where nobody untrusted can reach --listen
    /// (a gateway in front, a private network). Logged as a warning.
    #[arg(long, conflicts_with_all = ["password_file", "view_only_password_file"])]
    insecure_no_auth: bool,
    /// File holding a second password that admits view-only viewers (input ignored); its
    /// first 8 bytes must differ from the full-access password's (VNC uses only those).
    #[arg(long, value_name = "FILE")]
    view_only_password_file: Option<PathBuf>,
    /// File holding the password of QEMU's own VNC server, if it has one.
    #[arg(long, value_name = "FILE")]
    qemu_vnc_password_file: Option<PathBuf>,
    /// Desktop name shown to viewers.
    #[arg(long, default_value = "dmore")]
    name: String,
    /// Control socket to create (`status`, `freeze`).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Take over from the console with this control socket (it freezes and hands over).
    #[arg(long, value_name = "PATH")]
    restore_from: Option<PathBuf>,
    /// File whose first line is the key both consoles of a migration share (HMAC of the
    /// console-to-console transfer; at least 16 bytes, e.g. `openssl rand -hex 32`). Turns
    /// co-migration on.
    #[arg(long, value_name = "FILE")]
    peer_key_file: Option<PathBuf>,
    /// The VM's id in the transfer (both consoles must agree); default: --name.
    #[arg(long, value_name = "ID", requires = "peer_key_file")]
    vm_id: Option<String>,
    /// The --listen address is a service address on this interface that moves with the VM.
    #[arg(long, value_name = "IFACE", requires = "peer_key_file")]
    service_interface: Option<String>,
    /// Destination console: wait here for the source console's session (like QEMU's -incoming).
    #[arg(long, value_name = "ADDR", requires = "peer_key_file")]
    incoming: Option<SocketAddr>,
    /// Serving console: listen here for this VM's destination host announcing a migration
    /// before QEMU migrates (libvirt's hook does, `dmore libvirt`), so that input leaves the
    /// fast lane however soon the switchover follows. Give it this host's --incoming address:
    /// a console started with --incoming listens there for announcements once it serves.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "peer_key_file",
        conflicts_with = "incoming"
    )]
    announce_listen: Option<SocketAddr>,
    /// Where this VM's console listens (its --incoming) on another host; repeat for each host.
    /// When the VM starts migrating and no `prepare` named the destination (libvirt migrates
    /// without a word to the console), the source console tries these in turn: only the
    /// console waiting for this VM completes the authenticated Hellos.
    #[arg(long = "peer", value_name = "ADDR", requires = "peer_key_file")]
    peers: Vec<SocketAddr>,
    /// Seconds the session outlives its QEMU. Serving: viewers stay connected (the desktop
    /// name says QEMU has gone, input is discarded and counted) and the console re-attaches
    /// when QEMU's sockets answer again (a restarted VM); frozen for a migration: the
    /// checkpoint waits for the destination console. Then the console exits non-zero. 0: at once.
    #[arg(long, value_name = "SECS", default_value_t = console::front::DEFAULT_QEMU_WAIT.as_secs())]
    qemu_wait: u64,
    /// Send Tight JPEG (lossy) to viewers that ask for it with a JPEG quality level; without
    /// this, every encoding is lossless (as QEMU's VNC without its `lossy` option).
    #[arg(long)]
    lossy: bool,
    /// QEMU's serial chardev: QEMU runs with `-chardev socket,id=ser0,path=PATH,server=on,wait=off
    /// -serial chardev:ser0`. The console carries the serial console across migrations: every
    /// typed byte reaches the UART once, every output byte reaches each viewer once.
    #[arg(long, value_name = "PATH")]
    serial_socket: Option<PathBuf>,
    /// A unix socket (mode 0600) where operators on this host attach to the serial console
    /// (`dmore serial attach PATH`, or any client of a byte stream).
    #[arg(long, value_name = "PATH", requires = "serial_socket")]
    serial_attach: Option<PathBuf>,
    /// A TCP address for serial viewers (no password: needs --insecure-no-auth); on the
    /// service address it moves with the VM and viewers resume there (`dmore serial attach
    /// --reconnect HOST:PORT`).
    #[arg(long, value_name = "ADDR", requires = "serial_socket")]
    serial_listen: Option<SocketAddr>,
    /// Gateway mode: serial viewers through `dmore gateway serve --ssh-listen` arrive as
    /// resumable streams on this TCP address (with the key of --gateway-psk-file).
    #[arg(long, value_name = "ADDR", requires_all = ["serial_socket", "gateway_psk_file"])]
    serial_gateway_listen: Option<SocketAddr>,
    /// Serial output kept and moved with the console, for viewers that attach later
    /// (bytes, or with a KiB/MiB suffix).
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_size)]
    serial_scrollback: usize,
    /// Gateway mode: also accept viewers that come through `dmore gateway` over resumable
    /// streams, on this TCP address (use the same port on every host the VM may move to: a
    /// moving console tells the gateway the destination's host with this port).
    #[arg(long, value_name = "ADDR", requires = "gateway_psk_file")]
    gateway_listen: Option<SocketAddr>,
    /// File whose first line is the key shared with the gateway (at least 16 bytes).
    #[arg(long, value_name = "FILE", requires = "gateway_listen")]
    gateway_psk_file: Option<PathBuf>,
}

/// A size in bytes, with an optional `KiB` or `MiB` suffix.
fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s {
        s if s.ends_with("KiB") => (&s[..s.len() - 3], 1 << 10),
        s if s.ends_with("MiB") => (&s[..s.len() - 3], 1 << 20),
        s => (s, 1),
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n <= 64 << 20)
        .ok_or_else(|| format!("{s:?} is not a size of at most 64MiB (e.g. 256KiB)"))
}

pub(crate) fn read_password(path: &Path) -> anyhow::Result<rfb::Password> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading the secret file {}", path.display()))?;
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    anyhow::ensure!(
        !line.is_empty(),
        "the secret file {} is empty: put the password or key on its first line",
        path.display()
    );
    Ok(rfb::Password(line.to_vec()))
}

/// Runs the console until it stops; an error names the cause.
pub fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    // Before any thread exists: capabilities are per thread, and inherited when one is made.
    let transparent = args.service_interface.is_some();
    let dropped = console::privilege::keep_only(&console::privilege::needed(transparent))?;
    tracing::debug!(
        dropped = dropped.len(),
        transparent,
        "capabilities kept: only what the mode needs"
    );
    let password = match (&args.password_file, std::env::var_os("DMORE_VNC_PASSWORD")) {
        (Some(f), _) => Some(read_password(f)?),
        (None, Some(p)) => Some(rfb::Password(p.into_encoded_bytes())),
        (None, None) => None,
    };
    let view_only_password = args
        .view_only_password_file
        .as_deref()
        .map(read_password)
        .transpose()?;
    anyhow::ensure!(
        view_only_password.is_none() || password.is_some(),
        "--view-only-password-file needs a full-access password too \
         (--password-file or DMORE_VNC_PASSWORD)"
    );
    let mut link = LinkConfig::new(&args.vnc_socket, &args.qmp_socket);
    link.layout = Some(console::keymap::Layout::load(args.keymap.as_deref())?);
    link.vnc_password = args
        .qemu_vnc_password_file
        .as_deref()
        .map(read_password)
        .transpose()?;
    let migration = match &args.peer_key_file {
        Some(path) => Some(MigrationConfig {
            key: PeerKey {
                psk: read_password(path)?.0,
                vm_id: args.vm_id.clone().unwrap_or_else(|| args.name.clone()),
            },
            service_interface: args.service_interface.clone(),
            incoming: args.incoming,
            announce_listen: args.announce_listen,
            peers: args.peers.clone(),
        }),
        None => None,
    };
    let gateway = match (args.gateway_listen, &args.gateway_psk_file) {
        (Some(listen), Some(path)) => Some(GatewayConfig {
            listen,
            psk: read_password(path)?.0,
        }),
        _ => None,
    };
    let config = ConsoleConfig {
        link,
        listen: args.listen,
        access: Access {
            password,
            view_only_password,
            all_view_only: false,
            insecure_no_auth: args.insecure_no_auth,
        },
        name: args.name,
        control: args.control,
        restore_from: args.restore_from,
        migration,
        qemu_wait: std::time::Duration::from_secs(args.qemu_wait),
        lossy: args.lossy,
        serial: args
            .serial_socket
            .map(|socket| console::front::SerialConfig {
                socket,
                attach: args.serial_attach,
                listen: args.serial_listen,
                scrollback: args.serial_scrollback,
                gateway: args
                    .serial_gateway_listen
                    .zip(gateway.as_ref())
                    .map(|(listen, g)| GatewayConfig {
                        listen,
                        psk: g.psk.clone(),
                    }),
            }),
        gateway,
    };
    // One thread: a key crosses reader → hub → link tasks, and on a multi-thread runtime each
    // hop can wake a parked worker (~25-37 µs each on this 2-core machine, against ~9-20 µs
    // here; `dmore bench console`, "Where the time goes"). The hub encodes on one task anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(console::front::run(config))? {
        Exit::Stopped => tracing::info!("console stopped"),
        Exit::HandedOver => tracing::info!("console handed over"),
    }
    Ok(())
}
