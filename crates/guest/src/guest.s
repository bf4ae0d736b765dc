# dmore's tiny test guest: a 32-bit multiboot kernel (GNU as, AT&T syntax).
#
# It programs the i8042 itself (translation on, so the keyboard speaks scancode set 1 under
# qboot and SeaBIOS alike), reports PS/2 key and mouse-button events and LED changes on COM1,
# echoes keys on the VGA text screen, and runs an optional memory-dirtying workload and a
# screen animation from a 1 kHz PIT interrupt. It idles in `hlt`.
#
# The serial line grammar is documented in the guest crate's lib.rs; keep both in step.
#
# Register convention for the helpers below: %eax, %ecx, %edx are clobbered; %ebx, %esi,
# %edi, %ebp are preserved unless a comment says otherwise.

    .set MB_MAGIC,      0x1BADB002
    .set MB_FLAGS,      0x00000003          # page-align modules, want memory info
    .set MB_BOOT_MAGIC, 0x2BADB002

    .set COM1,          0x3f8
    .set COM2,          0x2f8               # the serial console (`uart=<ms>`)
    .set VGA_TEXT,      0xb8000
    .set VGA_COLS,      80
    .set VGA_ROWS,      25
    .set ATTR,          0x07                # light grey on black
    .set STATUS_ATTR,   0x70                # black on light grey (row 0)

    .set KBC_DATA,      0x60
    .set KBC_STATUS,    0x64
    .set KBC_RING_SIZE, 4096                # controller bytes held for reporting; a power of two
    .set PIT_DIVISOR,   1193                # 1193182 Hz / 1193 = 1000.15 Hz
    .set TICK_HZ,       1000

    .set ANIM_COL,      72                  # the animated region: row 0, columns 72..79
    .set MAX_OPTION,    1000000             # numbers on the command line saturate here
    .set MAX_RATE,      65536               # MiB/s; keeps pages-per-second within 32 bits

# ---------------------------------------------------------------------------------------------
    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

# ---------------------------------------------------------------------------------------------
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov %eax, %esi                          # multiboot magic; %ebx = multiboot info
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $__bss_start, %edi                  # zero .bss (the stack lives there too)
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $stack_top, %esp

    mov $COM1, %dx
    call uart_init
    call vga_setmode
    call vga_init
    mov %esi, %eax
    call read_multiboot                     # %ebx = info; options and memory size
    call setup_dirty_region
    call print_options
    cmpl $0, opt_uart
    je 2f
    mov $COM2, %dx
    call uart_init
2:
    call vbe_init
    call idt_init
    call lapic_init
    call pic_init
    call pit_init
    call kbc_init
    sti
    mov $str_ready, %esi
    call serial_puts
idle:
    cmpl $0, opt_fill                       # filling: write as fast as the UART takes it
    jne 1f
    hlt
1:  cmpl $0, opt_uart
    je idle
    call uart_service
    jmp idle

# ---------------------------------------------------------------------------------------------
# Multiboot information: memory above 1 MiB and the command line.
# In: %eax = boot magic, %ebx = info pointer.
read_multiboot:
    push %esi
    cmp $MB_BOOT_MAGIC, %eax
    jne 9f
    mov (%ebx), %ecx                        # flags
    test $1, %ecx
    jz 1f
    mov 8(%ebx), %eax                       # mem_upper, KiB above 1 MiB
    mov %eax, mem_upper_kib
1:  test $4, %ecx
    jz 9f
    mov 16(%ebx), %esi                      # cmdline (physical = virtual here)
    test %esi, %esi
    jz 9f
    call parse_cmdline
9:  pop %esi
    ret

# Parses `key=value` tokens separated by spaces. Unknown tokens (the kernel path QEMU puts
# first, anything else) are skipped. In: %esi = NUL-terminated string.
parse_cmdline:
    push %esi
    push %edi
0:  movb (%esi), %al                        # skip spaces
    test %al, %al
    jz 9f
    cmp $' ', %al
    jne 1f
    inc %esi
    jmp 0b
1:  mov $kw_dirty, %edi
    call match_prefix
    jnz 2f
    call parse_dec
    mov %eax, opt_dirty_mib
    jmp 8f
2:  mov $kw_rate, %edi
    call match_prefix
    jnz 3f
    call parse_dec
    cmp $MAX_RATE, %eax
    jbe 21f
    mov $MAX_RATE, %eax
21: mov %eax, opt_rate
    jmp 8f
3:  mov $kw_animate, %edi
    call match_prefix
    jnz 4f
    call parse_dec
    mov %eax, opt_animate
    jmp 8f
4:  mov $kw_uart, %edi
    call match_prefix
    jnz 41f
    call parse_dec
    mov %eax, opt_uart
    jmp 8f
41: mov $kw_fill, %edi
    call match_prefix
    jnz 5f
    call parse_dec
    mov %eax, opt_fill
    jmp 8f
5:  mov $kw_vbe, %edi                       # vbe=<width>x<height>
    call match_prefix
    jnz 8f
    call parse_dec
    mov %eax, opt_vbe_w
    cmpb $'x', (%esi)
    jne 8f
    inc %esi
    call parse_dec
    mov %eax, opt_vbe_h
8:  movb (%esi), %al                        # skip the rest of the token
    test %al, %al
    jz 9f
    cmp $' ', %al
    je 0b
    inc %esi
    jmp 8b
9:  pop %edi
    pop %esi
    ret

# ZF=1 and %esi advanced past the keyword if the string at %esi starts with the NUL-terminated
# keyword at %edi; ZF=0 and %esi unchanged otherwise.
match_prefix:
    push %esi
    push %edi
0:  movb (%edi), %al
    test %al, %al
    jz 1f
    cmpb (%esi), %al
    jne 2f
    inc %esi
    inc %edi
    jmp 0b
1:  pop %edi
    add $4, %esp                            # drop the saved %esi: keep the advanced one
    xor %eax, %eax                          # ZF=1
    ret
2:  pop %edi
    pop %esi
    or $1, %eax                             # ZF=0
    ret

# Decimal number at %esi -> %eax, saturating at MAX_OPTION; %esi advanced past the digits.
parse_dec:
    xor %eax, %eax
0:  movzbl (%esi), %ecx
    sub $'0', %ecx
    cmp $9, %ecx
    ja 9f
    imul $10, %eax
    add %ecx, %eax
    cmp $MAX_OPTION, %eax
    jbe 1f
    mov $MAX_OPTION, %eax
1:  inc %esi
    jmp 0b
9:  ret

# The dirtied region starts at the first MiB boundary above the kernel (the multiboot info
# QEMU put there is no longer needed) and is capped to the memory multiboot reported.
setup_dirty_region:
    mov $_end, %eax
    add $0xfffff, %eax
    and $0xfff00000, %eax
    mov %eax, dirty_base
    mov mem_upper_kib, %ecx
    shl $10, %ecx
    add $0x100000, %ecx                     # end of memory
    sub %eax, %ecx
    jbe 9f                                  # nothing above the kernel
    shr $12, %ecx                           # pages available
    mov opt_dirty_mib, %eax
    cmp $4096, %eax                         # more than 4 GiB cannot exist here
    jbe 1f
    mov $4096, %eax
1:  shl $8, %eax                            # pages asked for
    cmp %ecx, %eax
    jbe 2f
    mov %ecx, %eax
2:  and $0xffffff00, %eax                   # whole MiB, as reported
    mov %eax, dirty_pages
    mov opt_rate, %eax
    shl $8, %eax
    mov %eax, dirty_pages_per_s
    mov dirty_pages, %ecx                   # touch every page once: the whole region is
    mov dirty_base, %edx                    # resident and non-zero from the start, so a
    test %ecx, %ecx                         # migration has all of it to copy at any rate
    jz 9f
3:  movl $0xd1d1d1d1, (%edx)
    add $4096, %edx
    loop 3b
9:  ret

# OPTS dirty=<MiB in use> rate=<MiB/s> animate=<ms>
print_options:
    mov $str_opts_dirty, %esi
    call serial_puts
    mov dirty_pages, %eax
    shr $8, %eax
    call serial_dec
    mov $str_opts_rate, %esi
    call serial_puts
    mov opt_rate, %eax
    call serial_dec
    mov $str_opts_animate, %esi
    call serial_puts
    mov opt_animate, %eax
    call serial_dec
    mov $'\n', %al
    call serial_putc
    ret

# ---------------------------------------------------------------------------------------------
# The UARTs, polled, 115200 8N1. COM1 carries the reports; COM2 is the serial console of
# `uart=<ms>`: every byte received is echoed and counted, and every <ms> ms a numbered line
# `#<line> <received>\n` (8 hex digits each) is written.

# %dx = the UART's base port.
uart_init:
    push %ecx
    mov %edx, %ecx
    inc %dx
    xor %al, %al
    out %al, %dx                            # no UART interrupts
    add $2, %dx
    mov $0x80, %al
    out %al, %dx                            # DLAB
    mov %ecx, %edx
    mov $1, %al
    out %al, %dx                            # divisor 1
    inc %dx
    xor %al, %al
    out %al, %dx
    add $2, %dx
    mov $0x03, %al
    out %al, %dx                            # 8N1
    dec %dx
    mov $0xc7, %al
    out %al, %dx                            # FIFO on, cleared, receive trigger 14
    add $2, %dx
    mov $0x03, %al
    out %al, %dx                            # DTR, RTS
    pop %ecx
    ret

# %al = byte, to the UART at putc_port (COM1 but while uart_service writes, interrupts off).
# Preserves everything but flags. With interrupts off (every report: the handlers write them),
# first moves what the controller holds into the ring: each byte out is a VM exit, which waits
# for QEMU's main loop on a loaded host, so a report of ~15 bytes can take tens of ms, and the
# keyboard must not wait for whole reports (as a real guest's handler, this guest reads its
# keyboard whenever it runs).
serial_putc:
    push %edx
    push %ecx
    push %eax
    pushfl
    pop %ecx
    test $0x200, %ecx                       # IF set: main context; the handlers own the ring
    jnz 2f
    call kbc_pull
2:  mov putc_port, %edx
    add $5, %dx
    mov $100000, %ecx
0:  in %dx, %al
    test $0x20, %al
    jnz 1f
    loop 0b
1:  pop %eax
    sub $5, %dx
    out %al, %dx
    pop %ecx
    pop %edx
    ret

# COM2: echo and count what arrived (a FIFO's worth per call, so that a steady stream of input
# never keeps the timer away), then the numbered line when it is due. Interrupts off while
# writing to COM2 (putc_port is shared with the reports the interrupt handlers write).
uart_service:
    cli
    movl $COM2, putc_port
    mov $16, %ecx
0:  mov $COM2+5, %dx
    in %dx, %al
    test $1, %al                            # data ready
    jz 1f
    mov $COM2, %dx
    in %dx, %al
    incl uart_received
    call serial_putc
    loop 0b
1:  mov ticks, %eax
    sub uart_last, %eax
    cmp opt_uart, %eax
    jb 9f
    mov ticks, %eax
    mov %eax, uart_last
    mov $'#', %al
    call serial_putc
    mov uart_line, %eax
    mov $8, %ecx
    call serial_hex
    mov $' ', %al
    call serial_putc
    mov uart_received, %eax
    mov $8, %ecx
    call serial_hex
    mov $'\n', %al
    call serial_putc
    incl uart_line
9:  mov opt_fill, %ecx                      # `fill=<n>`: n filler bytes per call
    jecxz 10f
    mov $'.', %al
11: call serial_putc
    loop 11b
10: movl $COM1, putc_port
    sti
    ret

# %esi = NUL-terminated string (preserved).
serial_puts:
    push %esi
0:  lodsb
    test %al, %al
    jz 1f
    call serial_putc
    jmp 0b
1:  pop %esi
    ret

# %eax = unsigned number, printed in decimal.
serial_dec:
    push %ebx
    mov %esp, %ebx                          # digits are pushed, then popped in order
    mov $10, %ecx
0:  xor %edx, %edx
    div %ecx
    push %edx
    test %eax, %eax
    jnz 0b
1:  pop %eax
    add $'0', %al
    call serial_putc
    cmp %ebx, %esp
    jne 1b
    pop %ebx
    ret

# %eax = number, %ecx = digit count; lowercase hex.
serial_hex:
    push %ebx
    mov %eax, %ebx
    mov %ecx, %edx
    shl $2, %ecx
    ror %cl, %ebx                           # bring the top digit wanted to the top nibble
0:  rol $4, %ebx
    mov %ebx, %eax
    and $0xf, %eax
    movb hex_digits(%eax), %al
    call serial_putc
    dec %edx
    jnz 0b
    pop %ebx
    ret

# ---------------------------------------------------------------------------------------------
# VGA mode 3 (80x25 text), set up by hand: qboot runs no VGA BIOS, so under KVM+qboot the VGA
# is in its reset state. There QEMU draws nothing (attribute index bit 5, "palette on", is clear:
# vga_update_display blanks, and a blank never replaces the 640x480 "Guest has not initialized
# the display" placeholder) and drops writes to 0xb8000 (sequencer map mask 0, planar access).
# Registers as a PC BIOS sets them, the DAC loaded with the EGA palette, and the 8x16 font
# (build.rs takes it from SeaBIOS's VGA BIOS) put in plane 2. No PCI set-up is needed: QEMU's
# std VGA decodes the legacy ports and the 0xa0000 window whatever its PCI command register says.
vga_setmode:
    push %ebx
    push %esi
    push %edi
    mov $0x3c2, %dx
    mov $0x67, %al
    out %al, %dx                            # misc output: colour, 28 MHz, sync polarity
    mov $0x3c4, %dx                         # sequencer: reset, then the mode
    mov $vga_seq, %esi
    mov $5, %ecx
    call vga_indexed
    mov $0x3d4, %dx                         # CRTC: unlock registers 0..7 first
    mov $0x11, %al
    out %al, %dx
    inc %dx
    in %dx, %al
    and $0x7f, %al
    out %al, %dx
    dec %dx
    mov $vga_crtc, %esi
    mov $25, %ecx
    call vga_indexed
    mov $0x3ce, %dx
    mov $vga_gc, %esi
    mov $9, %ecx
    call vga_indexed
    mov $0x3da, %dx
    in %dx, %al                             # attribute controller: flip-flop to index
    mov $0x3c0, %dx
    mov $vga_attr, %esi
    xor %ecx, %ecx
0:  mov %cl, %al
    out %al, %dx
    lodsb
    out %al, %dx
    inc %ecx
    cmp $21, %ecx
    jb 0b
    mov $0x20, %al                          # palette on (video enabled)
    out %al, %dx
    # DAC: 64 EGA colours; bit 0..2 = b g r at 2/3 intensity, bit 3..5 = b g r at 1/3
    mov $0x3c8, %dx
    xor %al, %al
    out %al, %dx
    inc %dx
    xor %ecx, %ecx
1:  mov $4, %ebx                            # red: bits 2 and 5
    call vga_dac_component
    mov $2, %ebx                            # green: bits 1 and 4
    call vga_dac_component
    mov $1, %ebx                            # blue: bits 0 and 3
    call vga_dac_component
    inc %ecx
    cmp $64, %ecx
    jb 1b
    # Font into plane 2: sequential access to plane 2 at 0xa0000, 32 bytes per glyph.
    mov $0x3c4, %dx
    mov $vga_seq_font, %esi
    mov $5, %ecx
    call vga_indexed
    mov $0x3ce, %dx
    mov $vga_gc_font, %esi
    mov $9, %ecx
    call vga_indexed
    mov $vga_font, %esi
    mov $0xa0000, %edi
    mov $256, %ecx
2:  push %ecx
    mov $4, %ecx
    rep movsl
    xor %eax, %eax
    mov $4, %ecx
    rep stosl
    pop %ecx
    loop 2b
    mov $0x3c4, %dx                         # back to text access
    mov $vga_seq, %esi
    mov $5, %ecx
    call vga_indexed
    mov $0x3ce, %dx
    mov $vga_gc, %esi
    mov $9, %ecx
    call vga_indexed
    pop %edi
    pop %esi
    pop %ebx
    ret

# Writes %ecx bytes from %esi to the index/data pair at %dx, indices from 0.
vga_indexed:
    push %ebx
    xor %ebx, %ebx
0:  mov %bl, %al
    out %al, %dx
    inc %dx
    lodsb
    out %al, %dx
    dec %dx
    inc %ebx
    cmp %ecx, %ebx
    jb 0b
    pop %ebx
    ret

# One DAC component of colour %ecx: %ebx = its low bit mask; 6-bit value out to %dx.
vga_dac_component:
    xor %eax, %eax
    test %ebx, %ecx
    jz 0f
    add $42, %al
0:  shl $3, %ebx
    test %ebx, %ecx
    jz 1f
    add $21, %al
1:  out %al, %dx
    ret

# VGA text: row 0 is a status line (title, animation), rows 1..24 show echoed keys.
vga_init:
    push %edi
    mov $VGA_TEXT, %edi
    mov $(VGA_COLS * VGA_ROWS), %ecx
    mov $(ATTR << 8 | ' '), %ax
    rep stosw
    mov $VGA_TEXT, %edi
    mov $VGA_COLS, %ecx
    mov $(STATUS_ATTR << 8 | ' '), %ax
    rep stosw
    mov $VGA_TEXT, %edi
    mov $str_title, %edx
0:  movb (%edx), %al
    test %al, %al
    jz 1f
    mov $STATUS_ATTR, %ah
    stosw
    inc %edx
    jmp 0b
1:  movl $1, cursor_row
    movl $0, cursor_col
    call vga_update_cursor
    pop %edi
    ret

# Echoes the character in %al at the cursor: '\n' starts a line, '\b' rubs out, the rest is
# written as is. Scrolls rows 1..24 when the cursor leaves the bottom.
vga_echo:
    cmp $'\n', %al
    je vga_newline
    cmp $'\b', %al
    je 2f
    cmp $'\t', %al
    jne 1f
    mov $' ', %al
1:  mov cursor_row, %ecx
    imul $VGA_COLS, %ecx
    add cursor_col, %ecx
    mov $ATTR, %ah
    mov %ax, VGA_TEXT(,%ecx,2)
    incl cursor_col
    cmpl $VGA_COLS, cursor_col
    jae vga_newline
    jmp vga_update_cursor
2:  cmpl $0, cursor_col
    je 9f
    decl cursor_col
    mov cursor_row, %ecx
    imul $VGA_COLS, %ecx
    add cursor_col, %ecx
    movw $(ATTR << 8 | ' '), VGA_TEXT(,%ecx,2)
    jmp vga_update_cursor
9:  ret

vga_newline:
    movl $0, cursor_col
    incl cursor_row
    cmpl $VGA_ROWS, cursor_row
    jb vga_update_cursor
    push %esi
    push %edi
    mov $(VGA_TEXT + VGA_COLS * 2 * 2), %esi
    mov $(VGA_TEXT + VGA_COLS * 2), %edi
    mov $(VGA_COLS * (VGA_ROWS - 2)), %ecx
    rep movsw
    mov $VGA_COLS, %ecx
    mov $(ATTR << 8 | ' '), %ax
    rep stosw
    pop %edi
    pop %esi
    movl $(VGA_ROWS - 1), cursor_row
    # fall through
vga_update_cursor:
    mov cursor_row, %ecx
    imul $VGA_COLS, %ecx
    add cursor_col, %ecx
    mov $0x3d4, %dx
    mov $0x0f, %al
    out %al, %dx
    inc %dx
    mov %cl, %al
    out %al, %dx
    dec %dx
    mov $0x0e, %al
    out %al, %dx
    inc %dx
    mov %ch, %al
    out %al, %dx
    ret

# The animated region: the tick count in hex on a background colour that changes with every
# update, so every frame a viewer takes of it differs from the one before.
vga_animate:
    cmpl $0, vbe_lfb
    jne vbe_animate
    push %ebx
    push %edi
    mov ticks, %ebx
    mov anim_frame, %eax
    and $7, %eax
    shl $4, %eax
    or $0x0f, %eax
    mov %eax, %edx                          # attribute: white on a cycling background
    incl anim_frame
    mov $(VGA_TEXT + ANIM_COL * 2), %edi
    mov $8, %ecx
0:  rol $4, %ebx
    mov %ebx, %eax
    and $0xf, %eax
    movb hex_digits(%eax), %al
    mov %dl, %ah
    stosw
    loop 0b
    pop %edi
    pop %ebx
    ret

# ---------------------------------------------------------------------------------------------
# Interrupts: exceptions 0..31 report FAULT and stop; IRQs 0..15 at vectors 0x20..0x2f.
idt_init:
    xor %ecx, %ecx
0:  mov %ecx, %eax
    shl $3, %eax
    add $exc_stubs, %eax
    call idt_set
    inc %ecx
    cmp $32, %ecx
    jb 0b
1:  mov $irq_spurious, %eax
    call idt_set
    inc %ecx
    cmp $48, %ecx
    jb 1b
    mov $0x20, %ecx
    mov $irq_timer, %eax
    call idt_set
    mov $0x21, %ecx
    mov $irq_kbc, %eax
    call idt_set
    mov $0x2c, %ecx
    mov $irq_kbc, %eax
    call idt_set
    mov $0xff, %ecx
    mov $irq_apic_spurious, %eax
    call idt_set
    lidt idt_desc
    ret

# %ecx = vector (preserved), %eax = handler: a present 32-bit interrupt gate.
idt_set:
    lea idt(,%ecx,8), %edx
    mov %ax, (%edx)
    movw $0x08, 2(%edx)
    movw $0x8e00, 4(%edx)
    shr $16, %eax
    mov %ax, 6(%edx)
    ret

# The local APIC in virtual-wire mode, as a PC BIOS leaves it: software-enabled, LINT0 takes
# the 8259's interrupts (ExtINT), LINT1 is NMI. qboot leaves LINT0 masked, and KVM then
# delivers no 8259 interrupt at all.
lapic_init:
    mov $1, %eax
    push %ebx
    cpuid
    pop %ebx
    test $0x200, %edx                       # no local APIC: the 8259 is wired directly
    jz 9f
    mov $0x1b, %ecx                         # IA32_APIC_BASE
    rdmsr
    test $0x800, %eax                       # globally disabled: likewise
    jz 9f
    and $0xfffff000, %eax
    movl $0x1ff, 0xf0(%eax)                 # spurious vector 0xff, APIC enabled
    movl $0x700, 0x350(%eax)                # LVT0: ExtINT
    movl $0x400, 0x360(%eax)                # LVT1: NMI
9:  ret

# 8259 pair: master at 0x20, slave at 0x28; only IRQ0 (PIT), IRQ1 (keyboard), IRQ2 (cascade)
# and IRQ12 (mouse) unmasked.
pic_init:
    mov $0x11, %al
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xf8, %al
    out %al, $0x21
    mov $0xef, %al
    out %al, $0xa1
    ret

# PIT channel 0, rate generator at TICK_HZ.
pit_init:
    mov $0x34, %al
    out %al, $0x43
    mov $(PIT_DIVISOR & 0xff), %al
    out %al, $0x40
    mov $(PIT_DIVISOR >> 8), %al
    out %al, $0x40
    ret

    .balign 8
exc_stubs:
    .set vec, 0
    .rept 32
    .balign 8
    push $vec
    jmp exc_common
    .set vec, vec + 1
    .endr

# FAULT <vector hex>, then stop for good: a test sees the line instead of a silent hang.
exc_common:
    mov $str_fault, %esi
    call serial_puts
    pop %eax
    mov $2, %ecx
    call serial_hex
    mov $'\n', %al
    call serial_putc
0:  cli
    hlt
    jmp 0b

# The local APIC's spurious vector takes no EOI.
irq_apic_spurious:
    jmp irq_return

irq_spurious:
    push %eax
    mov $0x20, %al
    out %al, $0xa0
    out %al, $0x20
    pop %eax
    jmp irq_return

# Returns from a hardware interrupt without `iret`. Under the nested KVM of the machines dmore
# is developed on (AMD, L1 KVM), a 32-bit `iret` never completes: the vCPU spins on it for
# good (seen under qboot and SeaBIOS alike; `lret` and `popf` work). So the frame is unwound
# by hand: flags with IF still off, then `sti; ret` (the `sti` shadow covers the `ret`, so no
# interrupt nests here). Only for interrupts taken with IF set and CS unchanged, which is every
# hardware interrupt in this guest. Every register is restored; the stack is [eip, cs, eflags].
irq_return:
    push %eax                               # eax, eip, cs, eflags
    mov 12(%esp), %eax
    and $0xfffffdff, %eax                   # IF stays off until the sti below
    mov %eax, 8(%esp)                       # cs slot := eflags
    mov 4(%esp), %eax
    mov %eax, 12(%esp)                      # eflags slot := eip
    pop %eax                                # eip, eflags, eip
    add $4, %esp                            # eflags, eip
    popfl
    sti
    ret

# IRQ0: count ticks, animate, dirty memory.
irq_timer:
    pushal
    incl ticks
    mov opt_animate, %eax
    test %eax, %eax
    jz 1f
    decl anim_countdown
    jg 1f
    mov %eax, anim_countdown
    call vga_animate
1:  call dirty_tick
    call kbc_service
    mov $0x20, %al
    out %al, $0x20
    popal
    jmp irq_return

# Writes the tick count into the next pages of the region, at opt_rate MiB/s on average: one
# write per page is enough to dirty it for migration.
dirty_tick:
    mov dirty_pages, %ecx
    test %ecx, %ecx
    jz 9f
    mov dirty_acc, %eax
    add dirty_pages_per_s, %eax
    xor %edx, %edx
    mov $TICK_HZ, %ecx
    div %ecx                                # %eax = pages this tick, %edx = carried over
    mov %edx, dirty_acc
    mov %eax, %ecx
    test %ecx, %ecx
    jz 9f
    push %ebx
    mov ticks, %ebx
    mov dirty_cursor, %edx
0:  mov %edx, %eax
    shl $12, %eax
    add dirty_base, %eax
    mov %ebx, (%eax)
    inc %edx
    cmp dirty_pages, %edx
    jb 1f
    xor %edx, %edx
1:  loop 0b
    mov %edx, dirty_cursor
    pop %ebx
9:  ret

# IRQ1 and IRQ12: take the controller's bytes and report them.
irq_kbc:
    pushal
    call kbc_service
    mov $0x20, %al
    out %al, $0xa0
    out %al, $0x20
    popal
    jmp irq_return

# Reports the bytes the ring holds, routing each by the status register's AUX bit it came with,
# and moves every byte the controller holds into the ring before each. So QEMU's PS/2 queues
# (16 bytes) empty at the pace the guest takes interrupts, as a real guest's handler empties
# them (Linux queues the events for its readers), not at the pace of this guest's serial
# reports (a report is ~15 polled UART writes): a burst waits in the ring, not in QEMU, which
# drops what does not fit. At most 64 bytes a call (never spin in an interrupt); the 1 kHz
# timer calls it too, so what is left is reported within a tick.
kbc_service:
    mov $64, %ebx
0:  call kbc_pull
    call kbc_ring_pop
    jc 9f
    test $0x20, %cl
    jnz 1f
    call kbd_byte
    jmp 2f
1:  call mouse_byte
2:  dec %ebx
    jnz 0b
9:  ret

# Moves what the controller holds into the ring (status byte, data byte), until it is empty
# or the ring is full: then the rest stays in the controller. Preserves all but %eax, flags.
kbc_pull:
    push %ecx
    push %edx
    mov $64, %ecx
0:  mov kbc_ring_head, %edx
    sub kbc_ring_tail, %edx
    cmp $KBC_RING_SIZE, %edx
    jae 9f
    in $KBC_STATUS, %al
    test $0x01, %al
    jz 9f
    mov kbc_ring_head, %edx
    and $KBC_RING_SIZE - 1, %edx
    mov %al, kbc_ring(,%edx,2)
    in $KBC_DATA, %al
    mov %al, kbc_ring + 1(,%edx,2)
    incl kbc_ring_head
    loop 0b
9:  pop %edx
    pop %ecx
    ret

# The oldest byte of the ring: %al = data, %cl = status; carry set when the ring is empty.
kbc_ring_pop:
    push %edx
    mov kbc_ring_tail, %edx
    cmp kbc_ring_head, %edx
    je 8f
    and $KBC_RING_SIZE - 1, %edx
    mov kbc_ring(,%edx,2), %cl
    mov kbc_ring + 1(,%edx,2), %al
    incl kbc_ring_tail
    pop %edx
    clc
    ret
8:  pop %edx
    stc
    ret

# ---------------------------------------------------------------------------------------------
# Keyboard bytes (scancode set 1, translated by the controller). %al = byte.
kbd_byte:
    movzbl %al, %eax
    cmp $0xfa, %al
    je led_ack
    cmp $0xfe, %al                          # resend request: repeat the LED byte in flight
    je led_resend
    cmp $0x00, %al                          # overrun / error codes
    je 9f
    cmp $0xff, %al
    je 9f
    cmpl $0, e1_skip                        # Pause (E1 1D 45 / E1 9D C5) is not reported
    je 1f
    decl e1_skip
    ret
1:  cmp $0xe1, %al
    jne 2f
    movl $2, e1_skip
    ret
2:  cmp $0xe0, %al
    jne 3f
    movl $1, e0_prefix
    ret
3:  push %ebx
    push %esi
    mov %eax, %ebx                          # %bl = raw byte
    mov %eax, %esi
    and $0x7f, %esi                         # %esi = code
    incl key_count
    mov $'K', %al
    call serial_putc
    mov $' ', %al
    call serial_putc
    mov key_count, %eax
    call serial_dec
    mov $str_down, %eax
    test $0x80, %bl
    jz 4f
    mov $str_up, %eax
4:  push %esi
    mov %eax, %esi
    call serial_puts
    pop %esi
    mov %esi, %eax
    mov $2, %ecx
    cmpl $0, e0_prefix
    je 5f
    or $0xe000, %eax
    mov $4, %ecx
5:  call serial_hex
    mov $'\n', %al
    call serial_putc
    cmpl $0, e0_prefix
    movl $0, e0_prefix
    jne 8f                                  # extended keys: reported, not echoed
    # shift state
    cmp $0x2a, %esi
    je 6f
    cmp $0x36, %esi
    jne 7f
6:  xor %eax, %eax
    test $0x80, %bl
    jnz 61f
    inc %eax
61: mov %eax, shift_down
    jmp 8f
7:  test $0x80, %bl
    jnz 8f                                  # releases do nothing more
    cmp $0x3b, %esi                         # F1 repaints the whole screen
    jne 74f
    call screen_flood
    jmp 8f
74: mov $4, %eax                            # lock keys: toggle the LED bit and tell the keyboard
    cmp $0x3a, %esi
    je 71f
    mov $2, %eax
    cmp $0x45, %esi
    je 71f
    mov $1, %eax
    cmp $0x46, %esi
    je 71f
    cmp $0x80, %esi                         # echo a printable key
    jae 8f
    movb keymap_plain(%esi), %al
    cmpl $0, shift_down
    je 72f
    movb keymap_shift(%esi), %al
72: test %al, %al
    jz 8f
    testl $4, leds                          # Caps Lock flips the case of letters
    jz 73f
    mov %al, %cl
    or $0x20, %cl
    cmp $'a', %cl
    jb 73f
    cmp $'z', %cl
    ja 73f
    xor $0x20, %al
73: call vga_echo
    jmp 8f
71: xor %eax, leds
    call led_request
8:  pop %esi
    pop %ebx
9:  ret

# LED command state machine: 0xED, ACK, mask, ACK, then report. A lock key pressed while a
# command is in flight is remembered and sent once the keyboard has acknowledged.
led_request:
    cmpl $0, led_state
    je 1f
    movl $1, led_pending
    ret
1:  mov leds, %eax
    mov %eax, led_sent
    movl $1, led_state
    mov $0xed, %al
    jmp kbd_write

led_ack:
    mov led_state, %eax
    cmp $1, %eax
    jne 1f
    movl $2, led_state
    mov led_sent, %eax
    jmp kbd_write
1:  cmp $2, %eax
    jne 9f
    movl $0, led_state
    mov $str_leds, %esi
    call serial_puts
    mov led_sent, %eax
    mov $1, %ecx
    call serial_hex
    mov $'\n', %al
    call serial_putc
    cmpl $0, led_pending
    je 9f
    movl $0, led_pending
    jmp led_request
9:  ret

led_resend:
    mov led_state, %eax
    cmp $1, %eax
    jne 1f
    mov $0xed, %al
    jmp kbd_write
1:  cmp $2, %eax
    jne 9f
    mov led_sent, %eax
    jmp kbd_write
9:  ret

# ---------------------------------------------------------------------------------------------
# Mouse bytes: 3-byte packets; the first byte has bit 3 set (used to resynchronise) and the
# buttons in bits 0..2. Each button edge is reported, left, right, middle in that order.
mouse_byte:
    mov mouse_index, %ecx
    test %ecx, %ecx
    jnz 1f
    test $0x08, %al
    jz 9f                                   # not a packet start: drop until one comes
    movzbl %al, %eax
    mov %eax, mouse_first
    movl $1, mouse_index
    ret
1:  cmp $1, %ecx
    jne 2f
    movl $2, mouse_index
    ret
2:  movl $0, mouse_index
    push %ebx
    push %esi
    mov mouse_first, %ebx
    and $7, %ebx                            # new button state
    mov $1, %esi                            # bit under test: 1 L, 2 R, 4 M
3:  mov %ebx, %eax
    xor mouse_buttons, %eax
    test %esi, %eax
    jz 4f
    incl button_count
    mov $'B', %al
    call serial_putc
    mov $' ', %al
    call serial_putc
    mov button_count, %eax
    call serial_dec
    push %esi
    mov $str_down, %eax
    test %esi, %ebx
    jnz 31f
    mov $str_up, %eax
31: mov %eax, %esi
    call serial_puts
    pop %esi
    mov $'L', %al
    cmp $1, %esi
    je 32f
    mov $'R', %al
    cmp $2, %esi
    je 32f
    mov $'M', %al
32: call serial_putc
    mov $'\n', %al
    call serial_putc
4:  shl $1, %esi
    cmp $8, %esi
    jb 3b
    mov %ebx, mouse_buttons
    pop %esi
    pop %ebx
9:  ret

# ---------------------------------------------------------------------------------------------
# i8042 controller setup, polled, with interrupts off.
kbc_init:
    push %ebx
    mov $0xad, %al                          # both ports off while we set up
    call kbc_command
    mov $0xa7, %al
    call kbc_command
    call kbc_flush
    mov $0x20, %al                          # read the configuration byte
    call kbc_command
    call kbc_read
    and $0x8c, %al                          # IRQs off, both clocks on, translation...
    or $0x40, %al                           # ...on: the keyboard's set 2 reaches us as set 1
    mov %al, %bl
    mov $0x60, %al
    call kbc_command
    mov %bl, %al
    call kbc_write_data
    mov $0xae, %al                          # keyboard port on
    call kbc_command
    mov $0xa8, %al                          # aux port on
    call kbc_command
    # keyboard: reset, scancode set 2 (translated to 1), LEDs off, scanning on
    mov $0xff, %al
    call kbd_command
    call kbc_read                           # 0xAA self-test passed
    mov $0xf0, %al
    call kbd_command
    mov $0x02, %al
    call kbd_command
    mov $0xed, %al
    call kbd_command
    mov $0x00, %al
    call kbd_command
    mov $0xf4, %al
    call kbd_command
    # mouse: reset (also leaves any wheel mode), data reporting on
    mov $0xff, %al
    call aux_command
    call kbc_read                           # 0xAA
    call kbc_read                           # device id 0x00
    mov $0xf4, %al
    call aux_command
    call kbc_flush
    mov %bl, %al                            # now both IRQs on
    or $0x03, %al
    mov %al, %bl
    mov $0x60, %al
    call kbc_command
    mov %bl, %al
    call kbc_write_data
    pop %ebx
    ret

# Waits (bounded) until the controller can take a byte.
kbc_wait_write:
    push %ecx
    mov $1000000, %ecx
0:  in $KBC_STATUS, %al
    test $0x02, %al
    jz 1f
    loop 0b
1:  pop %ecx
    ret

# %al = controller command.
kbc_command:
    push %eax
    call kbc_wait_write
    pop %eax
    out %al, $KBC_STATUS
    ret

# %al = data byte for the keyboard (or the controller's last command).
kbc_write_data:
kbd_write:
    push %eax
    call kbc_wait_write
    pop %eax
    out %al, $KBC_DATA
    ret

# Reads one byte (bounded wait) -> %al; 0xff if nothing came.
kbc_read:
    push %ecx
    mov $1000000, %ecx
0:  in $KBC_STATUS, %al
    test $0x01, %al
    jnz 1f
    loop 0b
    mov $0xff, %al
    pop %ecx
    ret
1:  in $KBC_DATA, %al
    pop %ecx
    ret

# Drops whatever the controller holds.
kbc_flush:
    push %ecx
    mov $64, %ecx
0:  in $KBC_STATUS, %al
    test $0x01, %al
    jz 1f
    in $KBC_DATA, %al
    loop 0b
1:  pop %ecx
    ret

# Sends %al to the keyboard and waits for its ACK (bounded; a missing ACK is reported as
# `NOACK <sent> <got>`).
kbd_command:
    mov %al, %ah
    call kbd_write
    jmp expect_ack

# Sends %al to the mouse and waits for its ACK.
aux_command:
    push %eax
    mov $0xd4, %al
    call kbc_command
    pop %eax
    mov %al, %ah
    call kbc_write_data
    # fall through
# %ah = the byte just sent.
expect_ack:
    push %ebx
    push %esi
    push %eax
    call kbc_read
    cmp $0xfa, %al
    je 1f
    movzbl %al, %ebx
    mov $str_noack, %esi
    call serial_puts
    movzbl 1(%esp), %eax                    # %ah of the saved %eax
    mov $2, %ecx
    call serial_hex
    mov $' ', %al
    call serial_putc
    mov %ebx, %eax
    mov $2, %ecx
    call serial_hex
    mov $'\n', %al
    call serial_putc
1:  pop %eax
    pop %esi
    pop %ebx
    ret

# ---------------------------------------------------------------------------------------------
# Graphics mode (option vbe=<w>x<h>): Bochs VBE through ports 0x1CE/0x1CF, 32 bpp, linear
# framebuffer at BAR0 of the VGA at 00:02.0 (assigned here if the firmware left it unset).
# Text echo does not show there; the animation and F1's repaint do.
vbe_init:
    cmpl $0, opt_vbe_w
    je 9f
    cmpl $0, opt_vbe_h
    je 9f
    cmpl $1920, opt_vbe_w                   # 1920x1200x4 fits QEMU's 16 MiB of VRAM
    jbe 1f
    movl $1920, opt_vbe_w
1:  cmpl $1200, opt_vbe_h
    jbe 2f
    movl $1200, opt_vbe_h
2:  mov $0x80001000, %eax                   # 00:02.0 vendor/device: QEMU's std VGA?
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    cmp $0x11111234, %eax
    jne 9f
    mov $0x80001010, %eax                   # BAR0
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    and $0xfffffff0, %eax
    jnz 3f
    mov $0xe0000000, %eax
    out %eax, %dx
3:  mov %eax, vbe_lfb
    mov $0x80001004, %eax                   # command: memory space on
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %ax
    or $2, %ax
    out %ax, %dx
    mov $4, %eax                            # ENABLE = 0 while the mode changes
    xor %ecx, %ecx
    call vbe_write
    mov $1, %eax                            # XRES
    mov opt_vbe_w, %ecx
    call vbe_write
    mov $2, %eax                            # YRES
    mov opt_vbe_h, %ecx
    call vbe_write
    mov $3, %eax                            # BPP
    mov $32, %ecx
    call vbe_write
    mov $4, %eax                            # ENABLE: enabled, linear framebuffer
    mov $0x41, %ecx
    call vbe_write
    mov $0x3da, %dx                         # reset the attribute flip-flop, then unblank
    in %dx, %al
    mov $0x3c0, %dx
    mov $0x20, %al
    out %al, %dx
9:  ret

# Writes %cx to VBE register %ax.
vbe_write:
    mov $0x1ce, %dx
    out %ax, %dx
    mov $0x1cf, %dx
    mov %cx, %ax
    out %ax, %dx
    ret

# Fills %ecx pixels x %edx rows from address %edi with colour %eax (row stride: the mode's).
vbe_fill:
    push %ebx
    push %esi
    push %edi
    mov opt_vbe_w, %ebx
    shl $2, %ebx
    mov %ecx, %esi
0:  push %edi
    mov %esi, %ecx
    rep stosl
    pop %edi
    add %ebx, %edi
    dec %edx
    jnz 0b
    pop %edi
    pop %esi
    pop %ebx
    ret

# A new colour for frame %eax (a multiplicative hash, so consecutive frames differ).
frame_colour:
    imul $0x9e3779b1, %eax, %eax
    shr $8, %eax
    ret

# The animated region in graphics mode: the top right 64x16 pixels, a new colour each frame.
vbe_animate:
    push %edi
    mov anim_frame, %eax
    incl anim_frame
    call frame_colour
    mov opt_vbe_w, %edi
    sub $64, %edi
    shl $2, %edi
    add vbe_lfb, %edi
    mov $64, %ecx
    mov $16, %edx
    call vbe_fill
    pop %edi
    ret

# F1: repaint the whole screen in a new colour (text mode: a new background in every cell),
# so a viewer receives a full-screen update.
screen_flood:
    push %edi
    incl flood_count
    mov flood_count, %eax
    cmpl $0, vbe_lfb
    je 1f
    call frame_colour
    mov vbe_lfb, %edi
    mov opt_vbe_w, %ecx
    mov opt_vbe_h, %edx
    call vbe_fill
    pop %edi
    ret
1:  and $7, %eax
    shl $12, %eax
    or $0x0f20, %eax                        # ' ', white on background (count mod 8)
    mov $VGA_TEXT, %edi
    mov $(VGA_COLS * VGA_ROWS), %ecx
    rep stosw
    pop %edi
    ret

# ---------------------------------------------------------------------------------------------
    .section .rodata
str_ready:        .asciz "READY\n"
str_fault:        .asciz "FAULT "
str_leds:         .asciz "L "
str_down:         .asciz " D "
str_up:           .asciz " U "
str_opts_dirty:   .asciz "OPTS dirty="
str_opts_rate:    .asciz " rate="
str_opts_animate: .asciz " animate="
str_noack:        .asciz "NOACK "
str_title:        .asciz " dmore test guest"
kw_dirty:         .asciz "dirty="
kw_rate:          .asciz "rate="
kw_animate:       .asciz "animate="
kw_vbe:           .asciz "vbe="
kw_uart:          .asciz "uart="
kw_fill:          .asciz "fill="
hex_digits:       .ascii "0123456789abcdef"

vga_seq:      .byte 0x03, 0x00, 0x03, 0x00, 0x02
vga_seq_font: .byte 0x03, 0x00, 0x04, 0x00, 0x06
vga_crtc:     .byte 0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e
              .byte 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3
              .byte 0xff
vga_gc:       .byte 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff
vga_gc_font:  .byte 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0xff
vga_attr:     .byte 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07
              .byte 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f
              .byte 0x0c, 0x00, 0x0f, 0x08, 0x00

# keymap_plain / keymap_shift: 128 bytes each, generated by build.rs from src/keymap/table.rs;
# vga_font: 256 glyphs of 16 bytes.
    .include "keymap.inc"

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                # 0x08: flat 32-bit code
    .quad 0x00cf92000000ffff                # 0x10: flat data
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
    .balign 4
idt_desc:
    .word 256 * 8 - 1
    .long idt
putc_port:  .long COM1

    .bss
    .balign 16
idt:            .skip 256 * 8
stack:          .skip 16384
stack_top:
    .balign 4
mem_upper_kib:  .skip 4
opt_dirty_mib:  .skip 4
opt_rate:       .skip 4
opt_animate:    .skip 4
opt_uart:       .skip 4
opt_fill:       .skip 4
uart_received:  .skip 4
uart_line:      .skip 4
uart_last:      .skip 4
dirty_base:     .skip 4
dirty_pages:    .skip 4
dirty_pages_per_s: .skip 4
dirty_acc:      .skip 4
dirty_cursor:   .skip 4
ticks:          .skip 4
anim_countdown: .skip 4
anim_frame:     .skip 4
opt_vbe_w:      .skip 4
opt_vbe_h:      .skip 4
vbe_lfb:        .skip 4
flood_count:    .skip 4
kbc_ring:       .skip KBC_RING_SIZE * 2
kbc_ring_head:  .skip 4                 # bytes ever put in; the ring index is this mod the size
kbc_ring_tail:  .skip 4                 # bytes ever taken out
cursor_row:     .skip 4
cursor_col:     .skip 4
key_count:      .skip 4
button_count:   .skip 4
e0_prefix:      .skip 4
e1_skip:        .skip 4
shift_down:     .skip 4
leds:           .skip 4
led_state:      .skip 4
led_sent:       .skip 4
led_pending:    .skip 4
mouse_index:    .skip 4
mouse_first:    .skip 4
mouse_buttons:  .skip 4
