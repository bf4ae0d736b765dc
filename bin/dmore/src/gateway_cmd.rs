//! `dmore gateway`: gateway mode's processes (docs/gateway.md): the stationary gateway that
//! viewers connect to, and the endpoint next to a console that ends its resumable streams.

use anyhow::Context as _;
use gateway::dial::{serve_viewers, Dial};
use resume::{Config, Role};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::console_cmd::read_password;

/// Gateway mode: viewers' connections relayed over resumable streams (docs/gateway.md).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example, one console (its viewer port 127.0.0.1:5901) reached through a gateway:
  head -c 32 /dev/urandom | base64 > /etc/dmore/gateway.key     # the same file on both hosts
  dmore gateway endpoint --listen 10.0.0.2:4800 --service 127.0.0.1:5901 \\
      --key-file /etc/dmore/gateway.key                         # next to the console
  dmore gateway serve --listen 0.0.0.0:5900 --console 10.0.0.2:4800 \\
      --key-file /etc/dmore/gateway.key                         # the stationary gateway
  vncviewer gateway-host:5900

Browsers (noVNC): name the console, serve the page and the WebSocket, hand out a token:
  dmore gateway serve --web-listen 0.0.0.0:6080 --console vm1=10.0.0.2:4800 \\
      --key-file /etc/dmore/gateway.key --token-file /var/lib/dmore/tokens
  dmore gateway token --token-file /var/lib/dmore/tokens --console vm1 --ttl 600
  # prints the token and the page's URL (path and query) to open on the gateway;
  # with --tls-cert FILE --tls-key FILE the page and its WebSocket are https and wss

A console's serial line over SSH (the console with --serial-gateway-listen 10.0.0.2:4801):
  ssh-keygen -t ed25519 -N '' -f /etc/dmore/ssh_host_key
  echo \"vm1 $(cat ~alice/.ssh/id_ed25519.pub)\" >> /etc/dmore/ssh_keys
  dmore gateway serve --ssh-listen 0.0.0.0:2222 --ssh-host-key /etc/dmore/ssh_host_key \\
      --ssh-authorized-keys /etc/dmore/ssh_keys --serial-console vm1=10.0.0.2:4801 \\
      --key-file /etc/dmore/gateway.key
  ssh -t -p 2222 vm1@gateway-host      # alice's key; the session survives the VM's moves

The link between gateway and endpoint may break: the gateway reconnects (to the next --console
address in turn) and the stream resumes where it was, no byte lost or repeated. Not yet: the
console serving streams itself and carrying them when it moves, TLS for native viewers.")]
pub struct GatewayArgs {
    #[command(subcommand)]
    command: GatewayCommand,
}

#[derive(clap::Subcommand, Debug)]
enum GatewayCommand {
    /// The stationary gateway: accepts RFB/TCP viewers and browsers (noVNC over WebSocket),
    /// one resumable session per viewer.
    Serve(Box<ServeArgs>),
    /// Next to a console: accepts resumable streams and relays each to the console's port.
    Endpoint(EndpointArgs),
    /// A browser's access to one console until it expires: appends its SHA-256 to the token
    /// file and prints the token (shown only here) and the noVNC URL that uses it.
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("listeners").required(true).multiple(true)
    .args(["listen", "web_listen", "ssh_listen"])))]
struct ServeArgs {
    /// TCP address RFB viewers connect to (port 0 picks one; the bound address is printed);
    /// needs exactly one console name.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TCP address browsers connect to: the noVNC page from --web-root and its WebSocket
    /// (`/websockify?token=T`); needs --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    web_listen: Option<SocketAddr>,
    /// The directory of the page's static files, served read-only.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/novnc")]
    web_root: PathBuf,
    /// The file `dmore gateway token` writes grants to, read at each WebSocket upgrade.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve browsers over TLS (https, wss) with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "web_listen"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A console's endpoint, `[NAME=]ADDR` (NAME defaults to `default`); repeat a name for
    /// every place that console may be (tried in turn).
    #[arg(long, value_name = "[NAME=]ADDR", required_unless_present = "serial_console", value_parser = parse_console)]
    console: Vec<(String, SocketAddr)>,
    /// TCP address `ssh` clients connect to for a console's serial line: `ssh NAME@GATEWAY`,
    /// a public key that --ssh-authorized-keys lists for NAME; the bytes go to the console's
    /// serial lane (--serial-console) and follow it when it moves.
    #[arg(long, value_name = "ADDR", requires_all = ["ssh_host_key", "ssh_authorized_keys", "serial_console"])]
    ssh_listen: Option<SocketAddr>,
    /// The gateway's SSH host key (an unencrypted OpenSSH private key file).
    #[arg(long, value_name = "FILE")]
    ssh_host_key: Option<PathBuf>,
    /// Which keys open which console, one line each: `NAME KEYTYPE BASE64 [comment]` (an
    /// `authorized_keys` line with the console's name in front); read at each login.
    #[arg(long, value_name = "FILE")]
    ssh_authorized_keys: Option<PathBuf>,
    /// A console's serial lane, `NAME=ADDR` (its `--serial-gateway-listen`), for SSH users
    /// (--ssh-listen) and the browser terminal (`/serial?token=T` on --web-listen); repeat a
    /// name for every place that console may be (tried in turn).
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_console)]
    serial_console: Vec<(String, SocketAddr)>,
    /// File whose first line is the key shared with the endpoints (at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Bytes kept for replay per viewer and direction (the window announced).
    #[arg(long, value_name = "BYTES", default_value_t = resume::DEFAULT_REPLAY_CAP)]
    replay_cap: u32,
    /// Consecutive failed connection attempts after which a viewer's session gives up.
    #[arg(long, value_name = "N", default_value_t = 30)]
    max_attempts: u32,
}

#[derive(clap::Args, Debug)]
struct EndpointArgs {
    /// TCP address the gateway connects to.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The console's viewer address each session is relayed to.
    #[arg(long, value_name = "ADDR")]
    service: SocketAddr,
    /// File whose first line is the key shared with the gateway (at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Bytes kept for replay per session and direction (the window announced).
    #[arg(long, value_name = "BYTES", default_value_t = resume::DEFAULT_REPLAY_CAP)]
    replay_cap: u32,
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The gateway's token file (created, its user's alone, if missing).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// The console the token opens (a name the gateway's --console gives).
    #[arg(long, value_name = "NAME")]
    console: String,
    /// Seconds the token is good for.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    ttl: u64,
}

impl ServeArgs {
    /// Refuses serial lanes nothing would serve: `--serial-console` reaches users only through
    /// `--ssh-listen` or `--web-listen` (clap's groups cannot say "needs one of these" with a
    /// cause and a fix).
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.serial_console.is_empty()
                || self.ssh_listen.is_some()
                || self.web_listen.is_some(),
            "--serial-console is served to SSH users (--ssh-listen, with --ssh-host-key and \
             --ssh-authorized-keys) and to the browser terminal (--web-listen, with \
             --token-file), and neither is given: nobody could reach the serial console. Add \
             one of them, or drop --serial-console"
        );
        Ok(())
    }
}

fn parse_console(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s.split_once('=').unwrap_or(("default", s));
    if !gateway::tokens::valid_console_name(name) {
        return Err(format!(
            "{name:?} is not a console name (letters, digits, - _ . :)"
        ));
    }
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((name.to_owned(), addr))
}

fn config(role: Role, key_file: &Path, replay_cap: u32) -> anyhow::Result<Config> {
    let key = read_password(key_file)?.0;
    anyhow::ensure!(
        key.len() >= resume::MIN_PSK,
        "the key in {} is {} bytes: use at least {} (e.g. `head -c 32 /dev/urandom | base64`)",
        key_file.display(),
        key.len(),
        resume::MIN_PSK
    );
    anyhow::ensure!(replay_cap > 0, "--replay-cap must be at least 1 byte");
    let mut config = Config::new(role, key);
    config.replay_cap = replay_cap;
    Ok(config)
}

/// Runs the gateway or the endpoint until its listener fails; an error names the cause.
pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match args.command {
            GatewayCommand::Serve(a) => serve(*a).await,
            GatewayCommand::Endpoint(a) => {
                let config = config(Role::Console, &a.key_file, a.replay_cap)?;
                let listener = bind(a.listen).await?;
                gateway::accept::serve_sessions(listener, config, a.service)
                    .await
                    .context("accepting the gateway's streams")
            }
            GatewayCommand::Token(a) => token(&a),
        }
    })
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    a.check()?;
    let stream = config(Role::Gateway, &a.key_file, a.replay_cap)?;
    let dials = |list: Vec<(String, SocketAddr)>| {
        let mut dials: HashMap<String, Dial> = HashMap::new();
        for (name, addr) in list {
            dials
                .entry(name)
                .or_insert_with(|| Dial {
                    stream: stream.clone(),
                    consoles: Vec::new(),
                    max_attempts: a.max_attempts,
                    retry_after: Duration::from_millis(200),
                })
                .consoles
                .push(addr);
        }
        dials
    };
    let consoles = dials(a.console);
    let serial_consoles = dials(a.serial_console);
    // One service carries SSH users and browser terminals alike.
    let serial_names: Vec<String> = serial_consoles.keys().cloned().collect();
    let serial_service = crate::gateway_serial::service(serial_consoles);
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(listen), Some(host_key), Some(keys)) =
        (a.ssh_listen, &a.ssh_host_key, a.ssh_authorized_keys)
    {
        let config = gateway::ssh::SshConfig {
            host_key: gateway::ssh::load_host_key(host_key)
                .with_context(|| format!("the SSH host key {}", host_key.display()))?,
            authorized_keys: keys,
            consoles: serial_names.clone(),
        };
        let listener = bind(listen).await?;
        let service = serial_service.clone();
        tasks.spawn(async move {
            gateway::ssh::serve_ssh(listener, config, service)
                .await
                .context("accepting SSH clients")
        });
    }
    if let Some(listen) = a.listen {
        anyhow::ensure!(
            consoles.len() == 1,
            "--listen serves one console; --console names {}",
            consoles.len()
        );
        let dial = consoles.values().next().cloned().context("no console")?;
        let listener = bind(listen).await?;
        tasks.spawn(async move {
            serve_viewers(listener, dial)
                .await
                .context("accepting viewers")
        });
    }
    if let (Some(listen), Some(token_file)) = (a.web_listen, a.token_file) {
        anyhow::ensure!(
            a.web_root.is_dir(),
            "the web root {} is not a directory (Debian's noVNC: apt install novnc)",
            a.web_root.display()
        );
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |f: &PathBuf| {
                    std::fs::read(f).with_context(|| format!("reading {}", f.display()))
                };
                Some(
                    gateway::tls::acceptor(&read(cert)?, &read(key)?)
                        .with_context(|| format!("TLS with {}", cert.display()))?,
                )
            }
            _ => None,
        };
        let web = gateway::web::Web {
            root: a.web_root,
            index: "vnc.html".into(),
            token_file,
            consoles,
            serial: (!serial_names.is_empty()).then(|| gateway::web::SerialLanes {
                consoles: serial_names.iter().cloned().collect(),
                service: serial_service.clone(),
            }),
        };
        let listener = bind(listen).await?;
        tasks.spawn(async move {
            gateway::web::serve_web(listener, web, tls)
                .await
                .context("accepting browsers")
        });
    }
    match tasks.join_next().await {
        Some(result) => result?,
        None => Ok(()),
    }
}

fn token(a: &TokenArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    anyhow::ensure!(
        gateway::tokens::valid_console_name(&a.console),
        "{:?} is not a console name (letters, digits, - _ . :)",
        a.console
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    // ThreadRng: a CSPRNG seeded from the operating system.
    let (token, line) = gateway::tokens::issue(rand::random(), &a.console, now + a.ttl);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&a.token_file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("writing {}", a.token_file.display()))?;
    println!("{token}");
    println!(
        "vnc.html?path=websockify%3Ftoken%3D{token}&autoconnect=true  (on the gateway's \
         --web-listen address; good for {} s)",
        a.ttl
    );
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (is the address local and free?)"))?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    /// `dmore gateway serve` with `extra`, parsed and checked.
    fn serve_with(extra: &[&str]) -> anyhow::Result<()> {
        let argv = ["dmore", "serve", "--key-file", "/k"].iter().chain(extra);
        let cli = Cli::try_parse_from(argv)?;
        let GatewayCommand::Serve(args) = cli.args.command else {
            anyhow::bail!("not serve");
        };
        args.check()
    }

    #[test]
    fn a_serial_console_without_ssh_or_web_is_refused_with_its_cause_and_fix() {
        let err = serve_with(&[
            "--listen",
            "127.0.0.1:5900",
            "--console",
            "10.0.0.2:4800",
            "--serial-console",
            "vm1=10.0.0.2:4801",
        ])
        .expect_err("nothing serves the serial console");
        let text = err.to_string();
        assert!(
            text.contains("nobody could reach the serial console"),
            "{text}"
        );
        assert!(
            text.contains("--ssh-listen") && text.contains("--web-listen"),
            "{text}"
        );
        assert!(text.contains("drop --serial-console"), "{text}");
    }

    #[test]
    fn a_serial_console_with_ssh_or_web_or_none_at_all_passes() {
        let ssh = [
            "--ssh-listen",
            "127.0.0.1:2222",
            "--ssh-host-key",
            "/h",
            "--ssh-authorized-keys",
            "/a",
            "--serial-console",
            "vm1=10.0.0.2:4801",
        ];
        serve_with(&ssh).expect("SSH serves it");
        let web = [
            "--web-listen",
            "127.0.0.1:6080",
            "--token-file",
            "/t",
            "--serial-console",
            "vm1=10.0.0.2:4801",
        ];
        serve_with(&web).expect("the browser terminal serves it");
        serve_with(&["--listen", "127.0.0.1:5900", "--console", "10.0.0.2:4800"])
            .expect("no serial console, nothing to serve");
    }
}
