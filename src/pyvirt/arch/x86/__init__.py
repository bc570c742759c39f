"""x86-64 platform setup: memory layout, boot CPU state, CPUID, ACPI and MP tables."""
