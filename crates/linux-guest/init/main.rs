//! dmore's Linux test guest: PID 1 of the initramfs. Built by this crate's build.rs with rustc
//! alone (std only, glibc linked statically), so the guest needs no shell and no libraries.
//!
//! It mounts devtmpfs, proc and sysfs, loads the kernel modules the image lists (in the image
//! builder's order), opens every `/dev/input/event*` as it appears (grabbing it, so the
//! kernel's own console keyboard handler never acts on a key: no VT switch, no reboot on
//! Ctrl-Alt-Del, no echo) and reports every `EV_KEY` event on its report port (COM1,
//! `/dev/ttyS0`); it draws on the screen when the report port asks. The grammar is in the crate
//! docs (src/lib.rs) and parsed by `linux_guest::report`.
//!
//! With `dmore.uart=<ms>` it serves a serial console on COM1 (`/dev/ttyS0`, raw: the port of
//! users' `console=ttyS0` and of libvirt's first `<serial>`) and reports on COM2
//! (`/dev/ttyS1`) instead. The console works as the tiny guest's COM2: every byte received is
//! counted and echoed, and every `<ms>` a numbered line `#<line:08x> <received:08x>\n` goes
//! out (parsed by `scenarios::serial::parse`), from the first byte received on: so a client
//! that types first sees every line from 0 (QEMU drops what the guest writes before anyone is
//! connected to its chardev).
//!
//! With `dmore.shell=1` COM1 is a real shell instead: busybox's `sh` (the initramfs's
//! `/bin/busybox`), started at the first byte COM1 receives, on a pty whose master the init
//! relays to COM1 and back, counting the bytes each way and hashing what it wrote (FNV-1a 64),
//! which the `SERIAL` command reports.

use std::ffi::{c_char, c_int, c_long, c_short, c_ulong, c_void, CString};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

#[path = "../src/fnv.rs"]
mod fnv;
use std::time::{Duration, Instant};

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: c_short,
    revents: c_short,
}

/// glibc's `struct termios` is 60 bytes; only `cfmakeraw` looks inside.
#[repr(C, align(4))]
struct Termios([u8; 64]);

extern "C" {
    fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn syscall(number: c_long, ...) -> c_long;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn reboot(how: c_int) -> c_int;
    fn poll(fds: *mut PollFd, n: c_ulong, timeout_ms: c_int) -> c_int;
    fn tcgetattr(fd: c_int, t: *mut Termios) -> c_int;
    fn cfmakeraw(t: *mut Termios);
    fn tcsetattr(fd: c_int, when: c_int, t: *const Termios) -> c_int;
    fn setsid() -> c_int;
}

const SYS_FINIT_MODULE: c_long = 313;
const RB_DISABLE_CAD: c_int = 0;
const POLLIN: c_short = 1;
const O_NONBLOCK: i32 = 0o4000;
const O_NOCTTY: i32 = 0o400;
const TIOCSCTTY: c_ulong = 0x540e;
const TIOCGPTN: c_ulong = 0x8004_5430;
const TIOCSPTLCK: c_ulong = 0x4004_5431;

const EV_SYN: u16 = 0;
const EV_KEY: u16 = 1;
const EV_LED: u16 = 0x11;
const EV_REP: u16 = 0x14;
const BUS_I8042: u16 = 0x11;
const KEY_NUMLOCK: u16 = 69;
const KEY_SCROLLLOCK: u16 = 70;
const KEY_CAPSLOCK: u16 = 58;

/// `_IOC(dir, 'E', nr, size)`.
const fn evioc(dir: c_ulong, nr: c_ulong, size: c_ulong) -> c_ulong {
    (dir << 30) | (size << 16) | (0x45 << 8) | nr
}
const EVIOCGID: c_ulong = evioc(2, 0x02, 8);
const EVIOCSREP: c_ulong = evioc(1, 0x03, 8);
const EVIOCGNAME: c_ulong = evioc(2, 0x06, 128);
const EVIOCGBIT_EV: c_ulong = evioc(2, 0x20, 4);
const EVIOCGRAB: c_ulong = evioc(1, 0x90, 4);

/// One `struct input_event` on x86_64: a 16-byte timeval, type, code, value.
const EVENT_SIZE: usize = 24;

/// The report port; with `dmore.uart=` or `dmore.shell=1`, the serial console's.
const COM1: &str = "/dev/ttyS0";
/// The report port with a serial console.
const COM2: &str = "/dev/ttyS1";

fn main() {
    mount_pseudo_file_systems();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = Options::parse(&cmdline);
    let console_on_com1 = opts.uart_ms > 0 || opts.shell;
    let mut serial = Serial::open(if console_on_com1 { COM2 } else { COM1 });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serial.line(&format!("INIT {} {}", release.trim(), uptime_ms()));
    let mut lists = vec!["/lib/dmore/input.list"];
    if opts.graphics {
        lists.push("/lib/dmore/graphics.list");
    }
    for list in lists {
        load_modules(&mut serial, list);
    }
    serial.line(&format!("MODULES {}", uptime_ms()));
    let screen = Screen::open(&mut serial);
    let console = if opts.shell {
        Some(Console::Shell(Shell::open()))
    } else {
        (opts.uart_ms > 0).then(|| Console::Lines(SerialConsole::open(opts.uart_ms)))
    };
    let mut guest = Guest {
        console,
        serial,
        devices: Vec::new(),
        keys: 0,
        buttons: 0,
        leds: 0,
        opts,
        screen,
        ready: false,
        anim: None,
    };
    guest.run();
}

/// Mounts devtmpfs, proc and sysfs; from then on the kernel prints only emergencies on its
/// console (a kernel message must not cut a report line in two) and Ctrl-Alt-Del signals init
/// instead of rebooting.
fn mount_pseudo_file_systems() {
    for (fstype, dir) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        let _ = std::fs::create_dir_all(dir);
        let (src, target, fs) = (cstr(fstype), cstr(dir), cstr(fstype));
        // SAFETY: valid NUL-terminated strings that outlive the call; no data argument.
        unsafe {
            mount(
                src.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    let _ = std::fs::write("/proc/sys/kernel/printk", "1 4 1 7");
    // SAFETY: a plain syscall.
    unsafe { reboot(RB_DISABLE_CAD) };
}

/// The report port, raw; everything else reports through it.
struct Serial {
    port: File,
    pending: Vec<u8>,
}

impl Serial {
    fn open(path: &str) -> Serial {
        let port = loop {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(port) => break port,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        make_raw(&port);
        let mut serial = Serial {
            port,
            pending: Vec::new(),
        };
        // Ends whatever the firmware or the kernel left on the current line.
        serial.raw(b"\n");
        serial
    }

    fn raw(&mut self, bytes: &[u8]) {
        let _ = self.port.write_all(bytes);
    }

    fn line(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.raw(&bytes);
    }

    /// Complete command lines read so far (a read takes what the UART has).
    fn commands(&mut self) -> Vec<String> {
        let mut buf = [0u8; 256];
        let n = self.port.read(&mut buf).unwrap_or(0);
        self.pending
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).trim().to_owned();
            if !text.is_empty() {
                lines.push(text);
            }
        }
        if self.pending.len() > 1024 {
            self.pending.clear();
        }
        lines
    }
}

/// COM1 as a serial console: raw, non-blocking, every byte counted and echoed.
struct SerialConsole {
    port: File,
    received: u32,
    line: u32,
    period: Duration,
    /// The next numbered line; none before the first byte received.
    due: Option<Instant>,
}

impl SerialConsole {
    fn open(ms: u64) -> SerialConsole {
        SerialConsole {
            port: open_com1(),
            received: 0,
            line: 0,
            period: Duration::from_millis(ms.max(1)),
            due: None,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        write_all(&mut self.port, bytes);
    }

    /// Takes what the UART received: counted, echoed.
    fn receive(&mut self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = self.port.read(&mut buf) {
            if n == 0 {
                return;
            }
            self.received = self.received.wrapping_add(n as u32);
            self.due.get_or_insert_with(Instant::now);
            let echo = buf.get(..n).unwrap_or_default().to_vec();
            self.write(&echo);
        }
    }

    /// The numbered line, if due; when the next one is (none yet: a second from now).
    fn tick(&mut self, now: Instant) -> Instant {
        let Some(due) = self.due else {
            return now + Duration::from_secs(1);
        };
        if now >= due {
            let line = format!("#{:08x} {:08x}\n", self.line, self.received);
            self.line = self.line.wrapping_add(1);
            self.write(line.as_bytes());
            self.due = Some((due + self.period).max(now));
        }
        self.due.unwrap_or(now)
    }
}

/// Writes all of `bytes` to a non-blocking file (a UART or a pty takes them as fast as the
/// guest writes, a pty as fast as its reader reads).
fn write_all(file: &mut File, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return,
        }
    }
}

/// COM1, raw and non-blocking (waiting for the driver to register it).
fn open_com1() -> File {
    let port = loop {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(COM1)
        {
            Ok(port) => break port,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    make_raw(&port);
    port
}

/// COM1 as a real shell: busybox's `sh` on a pty, the init relaying between COM1 and the pty's
/// master, counting both ways. The shell starts at the first byte received, as a getty's
/// "press Enter": what it prints first (a banner, the prompt) reaches someone (QEMU drops what
/// the guest writes while no client is connected to its chardev).
struct Shell {
    port: File,
    /// The pty's master and the shell (kept so it is reaped; not restarted), once started.
    pty: Option<(File, Child)>,
    /// Bytes read from COM1 (all handed to the shell).
    received: u64,
    /// Bytes written to COM1 (all the shell's output).
    written: u64,
    /// FNV-1a 64 of the bytes written to COM1.
    hash: u64,
    /// The shell could not start, or its pty ended (it exited): nothing more to relay.
    ended: bool,
}

impl Shell {
    fn open() -> Shell {
        Shell {
            port: open_com1(),
            pty: None,
            received: 0,
            written: 0,
            hash: fnv::OFFSET,
            ended: false,
        }
    }

    /// busybox's `sh` on a new pty: the master.
    fn spawn() -> std::io::Result<(File, Child)> {
        let _ = std::fs::create_dir_all("/dev/pts");
        let (src, target) = (cstr("devpts"), cstr("/dev/pts"));
        // SAFETY: valid NUL-terminated strings that outlive the call; no data argument.
        unsafe {
            mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NONBLOCK | O_NOCTTY)
            .open("/dev/ptmx")?;
        let (unlock, mut number): (c_int, c_int) = (0, 0);
        // SAFETY: both ioctls take a pointer to an int, valid for the call.
        let ok = unsafe {
            ioctl(master.as_raw_fd(), TIOCSPTLCK, &unlock) == 0
                && ioctl(master.as_raw_fd(), TIOCGPTN, &mut number) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        let pts = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(format!("/dev/pts/{number}"))?;
        let mut command = Command::new("/bin/busybox");
        command
            .arg("sh")
            .env_clear()
            .env("PATH", "/bin")
            .env("HOME", "/")
            .env("TERM", "vt100")
            .env("PS1", "$ ")
            .stdin(Stdio::from(pts.try_clone()?))
            .stdout(Stdio::from(pts.try_clone()?))
            .stderr(Stdio::from(pts));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A session of its own with the pty (its stdin) as controlling terminal: job
                // control and Ctrl-C work as on a getty's shell.
                if setsid() < 0 || ioctl(0, TIOCSCTTY, 0 as c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        Ok((master, command.spawn()?))
    }

    /// COM1 to the shell (started at the first byte): counted.
    fn receive(&mut self, serial: &mut Serial) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.port.read(&mut buf) {
            if n == 0 || self.ended {
                return;
            }
            if self.pty.is_none() {
                match Shell::spawn() {
                    Ok(pty) => self.pty = Some(pty),
                    Err(e) => {
                        serial.line(&format!("ERR shell {e}"));
                        self.ended = true;
                        return;
                    }
                }
            }
            let Some((master, _)) = self.pty.as_mut() else {
                return;
            };
            self.received += n as u64;
            write_all(master, buf.get(..n).unwrap_or_default());
        }
    }

    /// The shell to COM1: counted and hashed.
    fn send(&mut self) {
        let Some((master, _)) = self.pty.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let bytes = buf.get(..n).unwrap_or_default();
                    self.written += n as u64;
                    self.hash = fnv::update(self.hash, bytes);
                    write_all(&mut self.port, bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // EIO: the shell and every other holder of its pty are gone.
                    self.ended = true;
                    return;
                }
            }
        }
    }
}

/// What serves COM1, if anything.
enum Console {
    /// The counting service (`dmore.uart=`).
    Lines(SerialConsole),
    /// The shell (`dmore.shell=1`).
    Shell(Shell),
}

impl Console {
    /// The files to poll for input.
    fn fds(&self) -> Vec<c_int> {
        match self {
            Console::Lines(c) => vec![c.port.as_raw_fd()],
            Console::Shell(s) => std::iter::once(s.port.as_raw_fd())
                .chain(s.pty.iter().filter(|_| !s.ended).map(|p| p.0.as_raw_fd()))
                .collect(),
        }
    }

    /// Handles what `ready` (one flag per [`fds`](Self::fds)) says is readable.
    fn ready(&mut self, ready: &[bool], serial: &mut Serial) {
        match self {
            Console::Lines(c) => {
                if ready.first() == Some(&true) {
                    c.receive();
                }
            }
            Console::Shell(s) => {
                if ready.get(1) == Some(&true) {
                    s.send();
                }
                if ready.first() == Some(&true) {
                    s.receive(serial);
                }
            }
        }
    }

    /// The next numbered line, if due; when to wake for the next one.
    fn tick(&mut self, now: Instant) -> Option<Instant> {
        match self {
            Console::Lines(c) => Some(c.tick(now)),
            Console::Shell(_) => None,
        }
    }
}

/// `cfmakeraw` on a tty: no echo, no line editing, no CR/NL translation.
fn make_raw(port: &File) {
    let mut t = Termios([0; 64]);
    // SAFETY: `t` is larger than glibc's struct termios and 4-aligned.
    unsafe {
        if tcgetattr(port.as_raw_fd(), &mut t) == 0 {
            cfmakeraw(&mut t);
            tcsetattr(port.as_raw_fd(), 0, &t);
        }
    }
}

/// What the kernel command line asks for.
struct Options {
    /// `dmore.graphics=1`: load the DRM modules (bochs) and wait for its framebuffer.
    graphics: bool,
    /// `dmore.wait=<bus>:<count>,...`: READY once this many key-capable devices of each bus
    /// type (hex) are open.
    wait: Vec<(u16, usize)>,
    /// `dmore.uart=<ms>`: serve COM1 (echo, count, a numbered line every `<ms>`) and report on
    /// COM2.
    uart_ms: u64,
    /// `dmore.shell=1`: a shell on COM1 (over `uart_ms`), reports on COM2.
    shell: bool,
}

impl Options {
    fn parse(cmdline: &str) -> Options {
        let mut opts = Options {
            graphics: false,
            wait: Vec::new(),
            uart_ms: 0,
            shell: false,
        };
        for word in cmdline.split_whitespace() {
            if let Some(ms) = word.strip_prefix("dmore.uart=") {
                opts.uart_ms = ms.parse().unwrap_or(0);
            } else if word == "dmore.shell=1" {
                opts.shell = true;
            } else if word == "dmore.graphics=1" {
                opts.graphics = true;
            } else if let Some(list) = word.strip_prefix("dmore.wait=") {
                for item in list.split(',') {
                    let parsed = item.split_once(':').and_then(|(bus, n)| {
                        Some((u16::from_str_radix(bus, 16).ok()?, n.parse().ok()?))
                    });
                    if let Some(want) = parsed {
                        opts.wait.push(want);
                    }
                }
            }
        }
        opts
    }
}

fn load_modules(serial: &mut Serial, list: &str) {
    let names = std::fs::read_to_string(list).unwrap_or_default();
    let params = cstr("");
    for path in names.lines().filter(|l| !l.is_empty()) {
        let Ok(file) = File::open(path) else {
            serial.line(&format!("ERR module {path} missing"));
            continue;
        };
        // SAFETY: an open fd, a NUL-terminated empty parameter string, no flags.
        let rc = unsafe { syscall(SYS_FINIT_MODULE, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(17) {
                serial.line(&format!("ERR module {path} {err}"));
            }
        }
    }
}

/// One open `/dev/input/eventN`.
struct Device {
    index: u32,
    file: File,
    bus: u16,
    keys: bool,
    leds: bool,
}

/// The screen: the VT (text or framebuffer console) and, in graphics mode, `/dev/fb0`.
struct Screen {
    tty: Option<File>,
    fb: Option<Framebuffer>,
    lines: u64,
    frames: u64,
}

struct Framebuffer {
    file: File,
    width: usize,
    height: usize,
    stride: usize,
}

impl Screen {
    fn open(serial: &mut Serial) -> Screen {
        let tty = OpenOptions::new().write(true).open("/dev/tty1").ok();
        let mut screen = Screen {
            tty,
            fb: None,
            lines: 0,
            frames: 0,
        };
        // Clear the screen and hide the cursor: a resting screen is a still one.
        screen.write_tty(b"\x1b[H\x1b[2J\x1b[?25l");
        if screen.tty.is_none() {
            serial.line("ERR no /dev/tty1");
        }
        screen
    }

    fn write_tty(&mut self, bytes: &[u8]) {
        if let Some(tty) = self.tty.as_mut() {
            let _ = tty.write_all(bytes);
        }
    }

    /// Finds a DRM framebuffer (not the firmware's): `FB <w>x<h> <bpp> <name>` once found.
    fn find_fb(&mut self, serial: &mut Serial) -> bool {
        if self.fb.is_some() {
            return true;
        }
        let read = |f: &str| std::fs::read_to_string(format!("/sys/class/graphics/fb0/{f}"));
        let Ok(name) = read("name") else {
            return false;
        };
        if !name.contains("drm") {
            return false;
        }
        let size = read("virtual_size").unwrap_or_default();
        let (w, h) = size.trim().split_once(',').unwrap_or(("0", "0"));
        let bpp: usize = read("bits_per_pixel")
            .ok()
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or(0);
        let stride = read("stride")
            .ok()
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or(0);
        let (Ok(width), Ok(height)) = (w.parse::<usize>(), h.parse::<usize>()) else {
            return false;
        };
        if bpp != 32 {
            serial.line(&format!("ERR framebuffer is {bpp} bpp, not 32"));
            return false;
        }
        let Ok(file) = OpenOptions::new().write(true).open("/dev/fb0") else {
            return false;
        };
        serial.line(&format!("FB {width}x{height} {bpp} {}", name.trim()));
        self.fb = Some(Framebuffer {
            file,
            width,
            height,
            stride,
        });
        true
    }

    /// `n` numbered lines on the console; the screen scrolls once it is full.
    fn scroll(&mut self, n: u64) {
        let mut text = String::new();
        for _ in 0..n {
            self.lines += 1;
            let k = self.lines;
            let fill: String = (0..(k % 40))
                .map(|i| char::from(b'a' + ((k + i) % 26) as u8))
                .collect();
            text.push_str(&format!("\r\ndmore line {k} {fill}"));
        }
        self.write_tty(text.as_bytes());
    }

    /// The next animation frame: a 128x128 square in a new colour at a new place, on the
    /// framebuffer; on the text console, the next line.
    fn frame(&mut self) {
        self.frames += 1;
        let k = self.frames as usize;
        let Some(fb) = self.fb.as_ref() else {
            self.scroll(1);
            return;
        };
        let side = 128.min(fb.width).min(fb.height);
        let x = (k * 97) % (fb.width - side + 1);
        let y = (k * 61) % (fb.height - side + 1);
        let colour = (k as u32).wrapping_mul(0x9e37_79b9) & 0x00ff_ffff;
        let row: Vec<u8> = (0..side).flat_map(|_| colour.to_le_bytes()).collect();
        for dy in 0..side {
            let offset = (y + dy) * fb.stride + x * 4;
            let _ = fb.file.write_at(&row, offset as u64);
        }
    }

    /// A photo-like frame over the whole framebuffer: smooth gradients in red and green, soft
    /// rings in blue (thousands of colours, no hard edges); on the text console, a line.
    fn picture(&mut self) {
        self.frames += 1;
        let Some(fb) = self.fb.as_ref() else {
            self.scroll(1);
            return;
        };
        let (w, h) = (fb.width.max(1), fb.height.max(1));
        for y in 0..fb.height {
            let row: Vec<u8> = (0..fb.width)
                .flat_map(|x| {
                    let r = (x * 255 / w) as u32;
                    let g = (y * 255 / h) as u32;
                    let t = ((x * x + y * y) / 97) % 512;
                    let b = if t < 256 { t } else { 511 - t } as u32;
                    (r << 16 | g << 8 | b).to_le_bytes()
                })
                .collect();
            // In pieces of 128 pixels, as a frame's square is written: whole rows written at
            // once never reached the screen here (bochs DRM's fbdev).
            for (i, piece) in row.chunks(512).enumerate() {
                let _ = fb.file.write_at(piece, (y * fb.stride + i * 512) as u64);
            }
        }
    }
}

struct Guest {
    serial: Serial,
    /// COM1 as a serial console (`dmore.uart=`, `dmore.shell=1`).
    console: Option<Console>,
    devices: Vec<Device>,
    keys: u64,
    buttons: u64,
    leds: u8,
    opts: Options,
    screen: Screen,
    ready: bool,
    /// Animation period and when the next frame is due.
    anim: Option<(Duration, Instant)>,
}

impl Guest {
    fn run(&mut self) -> ! {
        let mut next_scan = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_scan {
                self.scan();
                next_scan = now + Duration::from_millis(if self.ready { 500 } else { 50 });
            }
            if let Some((period, due)) = self.anim {
                if now >= due {
                    self.screen.frame();
                    self.anim = Some((period, (due + period).max(now)));
                }
            }
            let mut wake = next_scan;
            if let Some((_, due)) = self.anim {
                wake = wake.min(due);
            }
            if let Some(due) = self.console.as_mut().and_then(|c| c.tick(now)) {
                wake = wake.min(due);
            }
            let timeout = wake.saturating_duration_since(Instant::now()).as_millis();
            let mut fds: Vec<PollFd> = std::iter::once(self.serial.port.as_raw_fd())
                .chain(self.devices.iter().map(|d| d.file.as_raw_fd()))
                .chain(self.console.iter().flat_map(Console::fds))
                .map(|fd| PollFd {
                    fd,
                    events: POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call's duration.
            let n = unsafe {
                poll(
                    fds.as_mut_ptr(),
                    fds.len() as c_ulong,
                    timeout.min(1000) as c_int,
                )
            };
            if n <= 0 {
                continue;
            }
            let mut ready: Vec<bool> = fds.iter().map(|p| p.revents != 0).collect();
            if let Some(console) = &mut self.console {
                let at = ready.len().saturating_sub(console.fds().len());
                console.ready(&ready.split_off(at), &mut self.serial);
            }
            let mut out = String::new();
            for (i, device_ready) in ready.iter().enumerate().skip(1).rev() {
                if *device_ready {
                    self.read_device(i - 1, &mut out);
                }
            }
            if !out.is_empty() {
                self.serial.raw(out.as_bytes());
            }
            if ready.first() == Some(&true) {
                for command in self.serial.commands() {
                    self.command(&command);
                }
            }
        }
    }

    /// Opens the event devices that appeared since the last scan; prints READY once the
    /// wanted ones are open (and, in graphics mode, the DRM framebuffer is there).
    fn scan(&mut self) {
        if let Ok(dir) = std::fs::read_dir("/dev/input") {
            let mut found: Vec<u32> = dir
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("event"))
                        .and_then(|n| n.parse().ok())
                })
                .filter(|i| !self.devices.iter().any(|d| d.index == *i))
                .collect();
            found.sort_unstable();
            for index in found {
                self.open_device(index);
            }
        }
        if self.ready {
            return;
        }
        let devices_there = self.opts.wait.iter().all(|(bus, count)| {
            self.devices
                .iter()
                .filter(|d| d.keys && d.bus == *bus)
                .count()
                >= *count
        });
        let fb_there = !self.opts.graphics || self.screen.find_fb(&mut self.serial);
        if devices_there && fb_there {
            self.ready = true;
            self.serial.line(&format!("BOOTED {}", uptime_ms()));
            self.serial.line("READY");
        }
    }

    fn open_device(&mut self, index: u32) {
        let path = format!("/dev/input/event{index}");
        let Ok(file) = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(0o4000) // O_NONBLOCK
            .open(&path)
        else {
            return;
        };
        let fd = file.as_raw_fd();
        let mut id = [0u16; 4];
        let mut name = [0u8; 128];
        let mut evbits = 0u32;
        // SAFETY: each buffer is as large as the ioctl's size field says.
        unsafe {
            ioctl(fd, EVIOCGID, id.as_mut_ptr());
            ioctl(fd, EVIOCGNAME, name.as_mut_ptr());
            ioctl(fd, EVIOCGBIT_EV, &mut evbits);
            ioctl(fd, EVIOCGRAB, 1 as c_int);
        }
        let bus = id[0];
        let has = |ev: u16| evbits & (1 << ev) != 0;
        // The input core repeats held keys itself (value 2) on devices without hardware repeat
        // (USB HID): a period of 0 turns that off, so every report is an event the device
        // sent. The PS/2 keyboard repeats in "hardware" (QEMU sends none); setting its rate
        // would send it a command, so it is left alone.
        if has(EV_REP) && bus != BUS_I8042 {
            let rep: [u32; 2] = [250, 0];
            // SAFETY: EVIOCSREP reads two unsigned ints.
            unsafe { ioctl(fd, EVIOCSREP, rep.as_ptr()) };
        }
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(name.get(..len).unwrap_or_default()).into_owned();
        self.serial.line(&format!(
            "DEV {index} {bus:x} {} {} {name}",
            u8::from(has(EV_KEY)),
            u8::from(has(EV_LED))
        ));
        self.devices.push(Device {
            index,
            file,
            bus,
            keys: has(EV_KEY),
            leds: has(EV_LED),
        });
        if self.leds != 0 && has(EV_LED) {
            self.set_leds();
        }
    }

    fn read_device(&mut self, at: usize, out: &mut String) {
        let mut buf = [0u8; EVENT_SIZE * 64];
        loop {
            let Some(device) = self.devices.get_mut(at) else {
                return;
            };
            let index = device.index;
            let n = match device.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    out.push_str(&format!("GONE {index}\n"));
                    self.devices.remove(at);
                    return;
                }
            };
            for event in buf.get(..n).unwrap_or_default().chunks_exact(EVENT_SIZE) {
                let kind = u16::from_ne_bytes([event[16], event[17]]);
                let code = u16::from_ne_bytes([event[18], event[19]]);
                let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
                if kind != EV_KEY {
                    continue;
                }
                // Buttons: BTN_MISC (0x100) up to the end of the gamepad/joystick range.
                if (0x100..0x160).contains(&code) {
                    self.buttons += 1;
                    out.push_str(&format!("BTN {} {index} {code:x} {value}\n", self.buttons));
                } else {
                    self.keys += 1;
                    out.push_str(&format!("KEY {} {index} {code:x} {value}\n", self.keys));
                }
                let lock = match code {
                    KEY_SCROLLLOCK => 1,
                    KEY_NUMLOCK => 2,
                    KEY_CAPSLOCK => 4,
                    _ => 0,
                };
                if lock != 0 && value == 1 {
                    self.leds ^= lock;
                    self.set_leds();
                    out.push_str(&format!("LED {:x}\n", self.leds));
                }
            }
        }
    }

    /// Sends the LED state to every keyboard (the kernel's console would, were it not grabbed).
    fn set_leds(&mut self) {
        let mut bytes = Vec::new();
        for (code, bit) in [(0u16, 2u8), (1, 4), (2, 1)] {
            bytes.extend_from_slice(&event(EV_LED, code, i32::from(self.leds & bit != 0)));
        }
        bytes.extend_from_slice(&event(EV_SYN, 0, 0));
        for device in self.devices.iter_mut().filter(|d| d.leds) {
            let _ = device.file.write_all(&bytes);
        }
    }

    fn command(&mut self, command: &str) {
        let mut words = command.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg: Option<u64> = words.next().and_then(|w| w.parse().ok());
        match (verb, arg) {
            ("SCROLL", Some(n)) => {
                self.screen.scroll(n.min(10_000));
                self.serial
                    .line(&format!("DREW LINE {}", self.screen.lines));
            }
            ("FRAME", Some(n)) => {
                for _ in 0..n.min(10_000) {
                    self.screen.frame();
                }
                self.serial
                    .line(&format!("DREW FRAME {}", self.screen.frames));
            }
            ("PICTURE", None) => {
                self.screen.picture();
                self.serial
                    .line(&format!("DREW FRAME {}", self.screen.frames));
            }
            ("ANIM", Some(0)) => {
                self.anim = None;
                self.serial
                    .line(&format!("DREW FRAME {}", self.screen.frames));
            }
            ("ANIM", Some(ms)) => {
                let period = Duration::from_millis(ms);
                self.anim = Some((period, Instant::now()));
            }
            ("PING", Some(n)) => self.serial.line(&format!("PONG {n}")),
            ("SERIAL", None) => match &self.console {
                Some(Console::Shell(s)) => self.serial.line(&format!(
                    "SERIAL {} {} {:016x}",
                    s.received, s.written, s.hash
                )),
                _ => self.serial.line("ERR no shell on COM1"),
            },
            _ => self.serial.line(&format!("ERR command {command:?}")),
        }
    }
}

fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
    let mut e = [0u8; EVENT_SIZE];
    e[16..18].copy_from_slice(&kind.to_ne_bytes());
    e[18..20].copy_from_slice(&code.to_ne_bytes());
    e[20..24].copy_from_slice(&value.to_ne_bytes());
    e
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Milliseconds since the kernel started (`/proc/uptime`).
fn uptime_ms() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    (secs * 1000.0) as u64
}
