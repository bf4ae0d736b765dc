//! `dmore libvirt`: a domain's XML patched for dmore, and libvirt's QEMU hook.

use anyhow::Context as _;
use libvirt::hook::{self, Call, HookConfig, Mode};
use libvirt::DomainDir;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Run libvirt domains with dmore consoles (see docs/libvirt.md).
#[derive(clap::Args, Debug)]
pub struct LibvirtArgs {
    #[command(subcommand)]
    command: LibvirtCommand,
}

#[derive(clap::Subcommand, Debug)]
enum LibvirtCommand {
    /// Print a domain's XML (stdin, as `virsh dumpxml` prints it) patched for dmore: VNC on a
    /// unix socket, dmore's own QMP monitor, QEMU's VNC with key-delay-ms=0 and
    /// lock-key-sync=off. Patching twice changes nothing.
    #[command(after_help = "\
Example:
  virsh dumpxml vm1 | dmore libvirt xml > vm1.xml && virsh define vm1.xml")]
    Xml {
        /// The domain's socket directory; default /run/dmore/NAME (NAME: the domain's <name>).
        #[arg(long, value_name = "DIR")]
        domain_dir: Option<PathBuf>,
    },
    /// Install the hook: writes HOOKS_DIR/qemu.d/dmore, which runs `dmore libvirt hook`.
    /// libvirtd notices new hooks only when it starts: restart it afterwards.
    InstallHook {
        /// libvirt's hooks directory.
        #[arg(long, value_name = "DIR", default_value = "/etc/libvirt/hooks")]
        hooks_dir: PathBuf,
        /// The hook's configuration (which domains get a console, how).
        #[arg(long, value_name = "FILE", default_value = hook::CONFIG)]
        config: PathBuf,
    },
    /// libvirt's QEMU hook itself (libvirt runs it with the domain's XML on stdin): makes the
    /// domain's directory at `prepare`, starts its console at `started` (with --incoming on a
    /// migration's destination), stops it at `release`. Prints nothing on stdout.
    Hook {
        /// The hook's configuration (JSON: user, peer_key_file, domains.NAME.listen, ...).
        #[arg(long, value_name = "FILE", default_value = hook::CONFIG)]
        config: PathBuf,
        /// Only print what the hook would do, on stdout.
        #[arg(long)]
        dry_run: bool,
        /// The domain's name.
        object: String,
        /// libvirt's operation (prepare, start, started, stopped, release, migrate, ...).
        operation: String,
        /// libvirt's sub-operation (begin, end, ...).
        sub_operation: String,
        /// libvirt's extra argument (unused).
        extra: Option<String>,
    },
}

/// Runs one `dmore libvirt` command.
pub fn run(args: LibvirtArgs) -> anyhow::Result<()> {
    match args.command {
        LibvirtCommand::Xml { domain_dir } => {
            let xml = read_stdin()?;
            let dir = match domain_dir {
                Some(d) => DomainDir::new(d),
                None => {
                    DomainDir::under(Path::new(libvirt::RUN_DIR), &libvirt::domain_name(&xml)?)?
                }
            };
            let patched = libvirt::patch_domain(&xml, &dir)?;
            std::io::stdout()
                .write_all(patched.as_bytes())
                .context("writing the patched XML")?;
        }
        LibvirtCommand::InstallHook { hooks_dir, config } => {
            let dmore = std::env::current_exe().context("finding dmore's own executable")?;
            let path = hook::install(&hooks_dir, &dmore, &config)?;
            println!("installed {}", path.display());
            if !config.exists() {
                println!(
                    "the hook does nothing until {} lists domains (docs/libvirt.md)",
                    config.display()
                );
            }
            println!("restart libvirtd to have it run the new hook");
        }
        LibvirtCommand::Hook {
            config,
            dry_run,
            object,
            operation,
            sub_operation,
            extra: _,
        } => {
            let action = hook::decide(&operation, &sub_operation);
            if action == hook::Action::Nothing {
                // Most calls: no configuration or XML needed, and the hook returns at once.
                return Ok(());
            }
            let xml = read_stdin()?;
            let config = HookConfig::load(&config)?;
            let dmore = std::env::current_exe().context("finding dmore's own executable")?;
            let call = Call {
                object: &object,
                operation: &operation,
                sub_operation: &sub_operation,
                xml: &xml,
            };
            let mode = if dry_run { Mode::DryRun } else { Mode::Act };
            let report = hook::run(&config, &call, &dmore, mode)?;
            for line in report {
                if dry_run {
                    println!("{line}");
                } else {
                    // libvirt logs a hook's stderr; stdout of `migrate` would replace the XML.
                    eprintln!("dmore hook {object} {operation} {sub_operation}: {line}");
                }
            }
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut xml = String::new();
    std::io::stdin()
        .read_to_string(&mut xml)
        .context("reading the domain XML from stdin (UTF-8)")?;
    Ok(xml)
}
