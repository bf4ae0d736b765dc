//! `dmore gateway`: gateway mode's processes (docs/gateway.md): the stationary gateway that
//! viewers connect to, and the endpoint next to a console that ends its resumable streams.

use anyhow::Context as _;
use gateway::dial::{serve_viewers, Dial};
use resume::{Config, Role};
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

The link between gateway and endpoint may break: the gateway reconnects (to the next --console
address in turn) and the stream resumes where it was, no byte lost or repeated. Not yet: the
console serving streams itself and carrying them when it moves, tokens, WebSocket and TLS.")]
pub struct GatewayArgs {
    #[command(subcommand)]
    command: GatewayCommand,
}

#[derive(clap::Subcommand, Debug)]
enum GatewayCommand {
    /// The stationary gateway: accepts RFB/TCP viewers, one resumable session per viewer.
    Serve(ServeArgs),
    /// Next to a console: accepts resumable streams and relays each to the console's port.
    Endpoint(EndpointArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TCP address viewers connect to (port 0 picks one; the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address of the console's endpoint; repeat for every place it may be (tried in turn).
    #[arg(long, value_name = "ADDR", required = true)]
    console: Vec<SocketAddr>,
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
            GatewayCommand::Serve(a) => {
                let dial = Dial {
                    stream: config(Role::Gateway, &a.key_file, a.replay_cap)?,
                    consoles: a.console,
                    max_attempts: a.max_attempts,
                    retry_after: Duration::from_millis(200),
                };
                let listener = bind(a.listen).await?;
                serve_viewers(listener, dial)
                    .await
                    .context("accepting viewers")
            }
            GatewayCommand::Endpoint(a) => {
                let config = config(Role::Console, &a.key_file, a.replay_cap)?;
                let listener = bind(a.listen).await?;
                gateway::accept::serve_sessions(listener, config, a.service)
                    .await
                    .context("accepting the gateway's streams")
            }
        }
    })
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (is the address local and free?)"))?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}
