//! The guest's boot files: Debian's kernel, unpacked by `.ci/setup` into [`CACHE_DIR`], and an
//! initramfs made here from the init ([`crate::init_path`]) and the kernel's modules.
//!
//! The module load order comes from the package's `modules.dep` (written by `depmod -b DIR
//! VERSION` at setup): each wanted module after everything it depends on ([`load_order`]).
//! The archive is an uncompressed `newc` cpio ([`Cpio`]), the format the kernel unpacks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where `.ci/setup` unpacks the kernel package: `current` links to `<version>/`, which holds
/// `boot/vmlinuz-<version>` and `lib/modules/<version>/`. `DMORE_LINUX_GUEST` overrides it.
pub const CACHE_DIR: &str = "/opt/dmore-linux-guest/current";

/// Modules for input, loaded always: PS/2 mouse (the keyboard driver and i8042 are built into
/// Debian's kernel), evdev (`/dev/input/event*`), and USB HID behind an xhci controller.
pub const INPUT_MODULES: &[&str] = &["psmouse", "evdev", "xhci_pci", "usbhid", "hid_generic"];

/// Modules for graphics mode: QEMU's `-vga std` as a DRM device, with a framebuffer console.
pub const GRAPHICS_MODULES: &[&str] = &["bochs"];

/// Debian's busybox-static: one static binary with a shell, copied into the initramfs for the
/// shell on COM1 ([`crate::launch::SerialConsole::Shell`]).
pub const BUSYBOX: &str = "/bin/busybox";

/// Why the boot files cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The kernel is not unpacked where expected.
    #[error(
        "no Debian kernel in {0}: run `bash .ci/setup` as root (it unpacks linux-image-amd64 \
         there), or point DMORE_LINUX_GUEST at such a directory"
    )]
    NoKernel(PathBuf),
    /// The shell is wanted and busybox is not installed.
    #[error(
        "no {BUSYBOX} for the guest's shell: run `bash .ci/setup` as root (it installs \
         busybox-static)"
    )]
    NoBusybox,
    /// A wanted module is not in `modules.dep`.
    #[error("module {0} is not in the kernel's modules.dep")]
    NoModule(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel release, e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// `boot/vmlinuz-<version>`: the compressed kernel (bzImage, XZ).
    pub vmlinuz: PathBuf,
    /// `boot/vmlinux-<version>`, if `.ci/setup` extracted it: the uncompressed ELF, which QEMU
    /// enters directly (PVH) with SeaBIOS, skipping loading 8 MB through fw_cfg and XZ
    /// decompression, both slow under TCG.
    pub vmlinux: Option<PathBuf>,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel in `DMORE_LINUX_GUEST`, or else [`CACHE_DIR`].
    pub fn find() -> Result<Kernel, ImageError> {
        let dir =
            std::env::var_os("DMORE_LINUX_GUEST").map_or_else(|| CACHE_DIR.into(), PathBuf::from);
        Kernel::in_dir(&dir)
    }

    /// The kernel unpacked in `dir` (one release under `lib/modules`).
    pub fn in_dir(dir: &Path) -> Result<Kernel, ImageError> {
        let missing = || ImageError::NoKernel(dir.to_owned());
        let version = std::fs::read_dir(dir.join("lib/modules"))
            .map_err(|_| missing())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|v| dir.join(format!("boot/vmlinuz-{v}")).exists())
            .ok_or_else(missing)?;
        let vmlinux = dir.join(format!("boot/vmlinux-{version}"));
        Ok(Kernel {
            vmlinux: vmlinux.exists().then_some(vmlinux),
            vmlinuz: dir.join(format!("boot/vmlinuz-{version}")),
            modules: dir.join(format!("lib/modules/{version}")),
            version,
        })
    }
}

/// A module's name as the kernel knows it: the file name without `.ko`, `-` read as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.trim_end_matches(".ko").replace('-', "_")
}

/// The paths (as `modules.dep` writes them) of `wanted` and everything they depend on, each
/// after its dependencies, none twice, leaving out those in `skip`.
pub fn load_order(
    modules_dep: &str,
    wanted: &[&str],
    skip: &[String],
) -> Result<Vec<String>, ImageError> {
    let deps: HashMap<String, (&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|line| {
            let (module, rest) = line.split_once(':')?;
            Some((
                module_name(module),
                (module, rest.split_whitespace().collect()),
            ))
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    // Depth first, dependencies before dependents; `modules.dep` lists a module's whole
    // closure, so a module's own line is followed for each dependency.
    fn visit(
        name: &str,
        deps: &HashMap<String, (&str, Vec<&str>)>,
        order: &mut Vec<String>,
        skip: &[String],
        depth: usize,
    ) -> Result<(), ImageError> {
        let (path, needs) = deps
            .get(name)
            .ok_or_else(|| ImageError::NoModule(name.to_owned()))?;
        if order.iter().chain(skip).any(|p| p == path) || depth > 64 {
            return Ok(());
        }
        for need in needs {
            visit(&module_name(need), deps, order, skip, depth + 1)?;
        }
        if !order.iter().any(|p| p == path) {
            order.push((*path).to_owned());
        }
        Ok(())
    }
    for name in wanted {
        visit(&name.replace('-', "_"), &deps, &mut order, skip, 0)?;
    }
    Ok(order)
}

/// A `newc` cpio archive being written (what the kernel unpacks as an initramfs).
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    /// A directory (`mode` without the type bits, e.g. `0o755`).
    pub fn dir(&mut self, name: &str, mode: u32) {
        self.entry(name, 0o040_000 | mode, &[], (0, 0));
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, data, (0, 0));
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | mode, &[], (major, minor));
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }
}

/// The boot files of one guest: the kernel and an initramfs written for it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel image (bzImage).
    pub kernel: PathBuf,
    /// The uncompressed kernel with a PVH entry, if there is one ([`Kernel::vmlinux`]).
    pub vmlinux: Option<PathBuf>,
    /// The initramfs (`-initrd`).
    pub initrd: PathBuf,
    /// The kernel release.
    pub version: String,
}

impl Image {
    /// Writes `initramfs.cpio` into `dir` for the kernel [`Kernel::find`] finds: the init,
    /// the input and graphics modules and their load lists (the init reads the graphics list
    /// only when asked for graphics), and with `shell`, [`BUSYBOX`] as `/bin/busybox`.
    pub fn build(dir: &Path, shell: bool) -> Result<Image, ImageError> {
        let kernel = Kernel::find()?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ImageError::Io { path, source }
        };
        let dep_path = kernel.modules.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(io(&dep_path))?;
        let input = load_order(&dep, INPUT_MODULES, &[])?;
        let graphics = load_order(&dep, GRAPHICS_MODULES, &input)?;
        let mut cpio = Cpio::new();
        for d in ["dev", "proc", "sys", "lib", "lib/dmore", "lib/modules"] {
            cpio.dir(d, 0o755);
        }
        // The kernel opens /dev/console for init's stdin, stdout and stderr (a panic message
        // then reaches the serial console).
        cpio.char_device("dev/console", 0o600, 5, 1);
        let init = crate::init_path();
        cpio.file("init", 0o755, &std::fs::read(init).map_err(io(init))?);
        if shell {
            let busybox = std::fs::read(BUSYBOX).map_err(|_| ImageError::NoBusybox)?;
            cpio.dir("bin", 0o755);
            cpio.file("bin/busybox", 0o755, &busybox);
        }
        for (list, modules) in [("input", &input), ("graphics", &graphics)] {
            let mut paths = String::new();
            for module in modules.iter() {
                let src = kernel.modules.join(module);
                let name = format!("lib/modules/{}.ko", module_name(module));
                cpio.file(&name, 0o644, &std::fs::read(&src).map_err(io(&src))?);
                paths.push_str(&format!("/{name}\n"));
            }
            cpio.file(&format!("lib/dmore/{list}.list"), 0o644, paths.as_bytes());
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, cpio.finish()).map_err(io(&initrd))?;
        Ok(Image {
            kernel: kernel.vmlinuz,
            vmlinux: kernel.vmlinux,
            initrd,
            version: kernel.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/gpu/drm/tiny/bochs.ko: kernel/drivers/gpu/drm/drm_vram_helper.ko kernel/drivers/gpu/drm/drm_ttm_helper.ko kernel/drivers/gpu/drm/ttm/ttm.ko kernel/drivers/gpu/drm/drm_kms_helper.ko kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm_vram_helper.ko: kernel/drivers/gpu/drm/drm_ttm_helper.ko kernel/drivers/gpu/drm/ttm/ttm.ko kernel/drivers/gpu/drm/drm_kms_helper.ko kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm_ttm_helper.ko: kernel/drivers/gpu/drm/ttm/ttm.ko kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/ttm/ttm.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm_kms_helper.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/usb/host/xhci-pci.ko: kernel/drivers/usb/host/xhci-hcd.ko kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/host/xhci-hcd.ko: kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/core/usbcore.ko: kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/common/usb-common.ko:
kernel/drivers/hid/usbhid/usbhid.ko: kernel/drivers/hid/hid.ko kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
kernel/drivers/hid/hid.ko:
kernel/drivers/hid/hid-generic.ko: kernel/drivers/hid/hid.ko
";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = load_order(DEP, &["xhci_pci", "usbhid", "hid-generic"], &[]).unwrap();
        assert_eq!(
            names(&order),
            [
                "usb_common",
                "usbcore",
                "xhci_hcd",
                "xhci_pci",
                "hid",
                "usbhid",
                "hid_generic"
            ]
        );
        let input = order;
        let graphics = load_order(DEP, &["bochs"], &input).unwrap();
        assert_eq!(
            names(&graphics),
            [
                "drm",
                "ttm",
                "drm_ttm_helper",
                "drm_kms_helper",
                "drm_vram_helper",
                "bochs"
            ]
        );
        let skipped = load_order(DEP, &["hid_generic"], &input).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn an_unknown_module_is_an_error() {
        assert!(matches!(
            load_order(DEP, &["nosuch"], &[]),
            Err(ImageError::NoModule(m)) if m == "nosuch"
        ));
    }

    #[test]
    fn cpio_entries_are_newc_and_4_aligned() {
        let mut cpio = Cpio::new();
        cpio.dir("dev", 0o755);
        cpio.file("init", 0o755, b"abcde");
        cpio.char_device("dev/console", 0o600, 5, 1);
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        // Walk the archive as the kernel does.
        let mut at = 0;
        let mut seen = Vec::new();
        while at < bytes.len() {
            let header = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + namesize - 1]).unwrap();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            seen.push((
                name.to_owned(),
                mode,
                bytes[data_at..data_at + size].to_vec(),
            ));
            if name == "TRAILER!!!" {
                break;
            }
            if mode & 0o170_000 == 0o020_000 {
                assert_eq!((field(9), field(10)), (5, 1), "rdev");
            }
            at = (data_at + size).next_multiple_of(4);
        }
        assert_eq!(
            seen,
            [
                ("dev".to_owned(), 0o040_755, vec![]),
                ("init".to_owned(), 0o100_755, b"abcde".to_vec()),
                ("dev/console".to_owned(), 0o020_600, vec![]),
                ("TRAILER!!!".to_owned(), 0, vec![]),
            ]
        );
    }

    #[test]
    fn a_missing_kernel_names_the_setup_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Kernel::in_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains(".ci/setup"), "{err}");
    }
}
