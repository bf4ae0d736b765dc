//! `dmore migrate`: the arguments of one co-migration, turned into an [`orchestrate::Plan`];
//! progress on stderr (a bar on a terminal, plain lines otherwise), the timeline on stdout.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use orchestrate::{OrchestrateError, Plan, Progress};

/// Live-migrate a VM and its console together: QEMU moves the VM, the console moves its
/// viewers' sessions, and no viewer reconnects.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example (hosts A and B; the console of VM vm1 runs on A):
  # on B: the same QEMU as on A, plus -incoming defer, then its console
  qemu-system-x86_64 ... -incoming defer \\
      -qmp unix:/run/vm1/qmp.sock,server=on,wait=off \\
      -qmp unix:/run/vm1/console-qmp.sock,server=on,wait=off \\
      -vnc unix:/run/vm1/vnc.sock,key-delay-ms=0,lock-key-sync=off
  dmore console --vnc-socket /run/vm1/vnc.sock --qmp-socket /run/vm1/console-qmp.sock \\
      --listen 10.0.0.50:5901 --control /run/vm1/console.ctl \\
      --peer-key-file /etc/dmore/vm1.key --incoming 10.0.0.2:4700
  # then, from where all four sockets are reachable:
  dmore migrate --source-qmp /A/run/vm1/qmp.sock --dest-qmp /B/run/vm1/qmp.sock \\
      --incoming-uri tcp:10.0.0.2:4444 \\
      --source-console /A/run/vm1/console.ctl --dest-console /B/run/vm1/console.ctl \\
      --dest-console-addr 10.0.0.2:4700

The QMP sockets are the VMs' main monitors, not the consoles' own. With --hold-switchover the
VM waits, paused, until the destination console holds the session (its move then counts in
the VM's downtime); without it the console moves beside QEMU's switchover. On failure before
the switchover the migration is cancelled and the VM and its console stay on the source.
Ctrl-C before the switchover does the same (exit status 130); after it, the move finishes.")]
pub struct MigrateArgs {
    /// The source QEMU's main QMP monitor socket.
    #[arg(long, value_name = "PATH")]
    source_qmp: PathBuf,
    /// The destination QEMU's main QMP monitor socket (a QEMU started with `-incoming defer`).
    #[arg(long, value_name = "PATH")]
    dest_qmp: PathBuf,
    /// Where the destination QEMU receives the migration, e.g. `tcp:10.0.0.2:4444`.
    #[arg(long, value_name = "URI")]
    incoming_uri: String,
    /// The source console's control socket (`dmore console --control`).
    #[arg(long, value_name = "PATH")]
    source_console: PathBuf,
    /// The destination console's control socket (a console started with `--incoming`).
    #[arg(long, value_name = "PATH")]
    dest_console: PathBuf,
    /// The destination console's `--incoming` address, as the source host reaches it.
    #[arg(long, value_name = "IP:PORT")]
    dest_console_addr: SocketAddr,
    /// Keep the VM paused at the switchover until the destination console is ready.
    #[arg(long)]
    hold_switchover: bool,
    /// QEMU's `events` migration capability (MIGRATION events to every monitor).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off,
          action = clap::ArgAction::Set)]
    events: bool,
    /// Limit of each stage (QEMU's migration, the console's readiness, its takeover).
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Leave the source QEMU running (paused, `postmigrate`) instead of quitting it.
    #[arg(long)]
    keep_source: bool,
}

/// Parses `on`/`off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: say on or off")),
    }
}

impl MigrateArgs {
    /// The plan these arguments describe.
    fn plan(&self) -> Plan {
        Plan {
            source_qmp: self.source_qmp.clone(),
            dest_qmp: self.dest_qmp.clone(),
            incoming_uri: self.incoming_uri.clone(),
            source_console: self.source_console.clone(),
            dest_console: self.dest_console.clone(),
            dest_console_addr: self.dest_console_addr,
            hold_switchover: self.hold_switchover,
            events: self.events,
            timeout: Duration::from_secs(self.timeout),
            quit_source: !self.keep_source,
        }
    }
}

/// The exit status after Ctrl-C cancelled the migration (128 + SIGINT, as shells report it).
const INTERRUPTED: i32 = 130;

/// Runs the co-migration, showing progress; prints the timeline, or fails with the cause.
pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let plan = args.plan();
    plan.check()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut shown = Shown::new(std::io::stderr().is_terminal());
    let result = runtime.block_on(async {
        // Registered before anything is touched: from here on Ctrl-C cancels cleanly (or,
        // past the switchover, is reported) instead of killing the command midway.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("catching Ctrl-C")?;
        let interrupt = async move {
            sigint.recv().await;
        };
        Ok::<_, anyhow::Error>(
            orchestrate::comigrate_until(&plan, |p| shown.on(p), interrupt).await,
        )
    })?;
    shown.finish();
    match result {
        Ok(timeline) => {
            println!(
                "dmore migrate: the VM and its console moved\n{}",
                timeline.render()
            );
            Ok(())
        }
        Err(err @ OrchestrateError::Interrupted { .. }) => {
            // What happened and where the VM and its console are, then the shell's status for
            // a command ended by SIGINT.
            println!("dmore migrate: {err}");
            if let Some(cause) = std::error::Error::source(&err) {
                println!("  cause: {cause}");
            }
            drop(runtime);
            std::process::exit(INTERRUPTED);
        }
        Err(err) => {
            if let OrchestrateError::QuitSource { timeline, .. } = &err {
                println!(
                    "dmore migrate: the VM and its console moved\n{}",
                    timeline.render()
                );
            }
            Err(err.into())
        }
    }
}

/// How progress is shown: a bar of RAM sent on a terminal, plain lines otherwise.
enum Shown {
    Bar(Option<ProgressBar>),
    Lines(Lines),
}

impl Shown {
    fn new(terminal: bool) -> Shown {
        if terminal {
            Shown::Bar(None)
        } else {
            Shown::Lines(Lines::default())
        }
    }

    fn on(&mut self, p: &Progress) {
        match self {
            Shown::Lines(lines) => {
                if let Some(line) = lines.line(p) {
                    eprintln!("{line}");
                }
            }
            Shown::Bar(bar) => match p {
                Progress::Precopy {
                    transferred, total, ..
                } => {
                    let bar = bar.get_or_insert_with(|| {
                        let b = ProgressBar::new(*total);
                        b.set_style(
                            ProgressStyle::with_template(
                                "pre-copying RAM [{bar:40}] {bytes}/{total_bytes} {msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b
                    });
                    // Dirty pages are sent again: the bar grows past the RAM size then.
                    bar.set_length((*total).max(*transferred));
                    bar.set_position(*transferred);
                }
                other => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    if let Some(line) = phase_line(other) {
                        eprintln!("{line}");
                    }
                }
            },
        }
    }

    fn finish(&mut self) {
        if let Shown::Bar(Some(b)) = self {
            b.abandon();
        }
    }
}

/// The line for a phase change (pre-copy updates have their own).
fn phase_line(p: &Progress) -> Option<&'static str> {
    match p {
        Progress::Preparing => Some("checking and preparing the consoles"),
        Progress::Precopy { .. } => None,
        Progress::Switchover => Some("switchover: the VM is paused, the console freezes"),
        Progress::WaitingForConsole => {
            Some("QEMU done: waiting for the destination console to take over")
        }
        Progress::TooLateToCancel => Some(
            "Ctrl-C: too late to cancel, the VM already runs on the destination; finishing the \
             console's move",
        ),
        Progress::Done => Some("done"),
    }
}

/// Plain progress lines: each phase once, and pre-copy once QEMU knows the RAM size, then at
/// each further tenth of it sent (however often QEMU is polled).
#[derive(Default)]
struct Lines {
    last: Option<std::mem::Discriminant<Progress>>,
    /// Tenths of the RAM size sent at the last pre-copy line, once one with a size was shown.
    tenths: Option<u64>,
}

impl Lines {
    fn line(&mut self, p: &Progress) -> Option<String> {
        let kind = std::mem::discriminant(p);
        let first = self.last != Some(kind);
        self.last = Some(kind);
        match p {
            // QEMU reports no size while setting up.
            Progress::Precopy { total: 0, .. } => first.then(|| "pre-copying RAM".to_owned()),
            Progress::Precopy {
                transferred,
                total,
                remaining,
            } => {
                let tenths = transferred
                    .saturating_mul(10)
                    .checked_div(*total)
                    .unwrap_or(0);
                if self.tenths.is_some_and(|shown| tenths <= shown) {
                    return None;
                }
                self.tenths = Some(tenths);
                Some(format!(
                    "pre-copying RAM: {} MiB of {} MiB sent, {} MiB dirty",
                    transferred >> 20,
                    total >> 20,
                    remaining >> 20
                ))
            }
            other if first => phase_line(other).map(str::to_owned),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: MigrateArgs,
    }

    const REQUIRED: [&str; 13] = [
        "dmore",
        "--source-qmp",
        "/a/qmp.sock",
        "--dest-qmp",
        "/b/qmp.sock",
        "--incoming-uri",
        "tcp:10.0.0.2:4444",
        "--source-console",
        "/a/console.ctl",
        "--dest-console",
        "/b/console.ctl",
        "--dest-console-addr",
        "10.0.0.2:4700",
    ];

    fn parse(extra: &[&str]) -> Result<Plan, clap::Error> {
        let argv = REQUIRED.iter().chain(extra);
        Cli::try_parse_from(argv).map(|c| c.args.plan())
    }

    #[test]
    fn defaults_migrate_with_events_and_quit_the_source() {
        let plan = parse(&[]).unwrap();
        assert!(plan.events);
        assert!(plan.quit_source);
        assert!(!plan.hold_switchover);
        assert_eq!(plan.timeout, Duration::from_secs(120));
        assert_eq!(plan.dest_console_addr, "10.0.0.2:4700".parse().unwrap());
        assert!(plan.check().is_ok());
    }

    #[test]
    fn flags_reach_the_plan() {
        let plan = parse(&[
            "--hold-switchover",
            "--events",
            "off",
            "--timeout",
            "30",
            "--keep-source",
        ])
        .unwrap();
        assert!(plan.hold_switchover);
        assert!(!plan.events);
        assert!(!plan.quit_source);
        assert_eq!(plan.timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_refused() {
        for extra in [
            &["--events", "yes"][..],
            &["--timeout", "0"],
            &["--timeout", "soon"],
        ] {
            assert!(parse(extra).is_err(), "{extra:?}");
        }
        let mut argv = REQUIRED.to_vec();
        argv[12] = "b-host:4700";
        assert!(Cli::try_parse_from(argv).is_err(), "a name, not IP:PORT");
        assert!(
            Cli::try_parse_from(&REQUIRED[..11]).is_err(),
            "missing flag"
        );
    }

    #[test]
    fn plain_lines_show_each_phase_once_and_precopy_by_tenths() {
        let mut lines = Lines::default();
        let pre = |transferred, total| Progress::Precopy {
            transferred,
            total,
            remaining: 0,
        };
        let said: Vec<String> = [
            Progress::Preparing,
            Progress::Preparing,
            pre(0, 0),
            pre(0, 0),
            pre(1 << 20, 100 << 20),
            pre(5 << 20, 100 << 20),
            pre(10 << 20, 100 << 20),
            pre(15 << 20, 100 << 20),
            pre(35 << 20, 100 << 20),
            Progress::Switchover,
            Progress::Switchover,
            Progress::WaitingForConsole,
            Progress::Done,
        ]
        .iter()
        .filter_map(|p| lines.line(p))
        .collect();
        assert_eq!(said.len(), 8, "{said:#?}");
        assert_eq!(said[1], "pre-copying RAM", "{said:#?}");
        assert!(said[2].contains("1 MiB of 100 MiB"), "{said:#?}");
        assert!(said[3].contains("10 MiB of 100 MiB"), "{said:#?}");
        assert!(said[4].contains("35 MiB"), "{said:#?}");
        assert!(said[5].starts_with("switchover"), "{said:#?}");
    }
}
