<#
.SYNOPSIS
  Writes a full memory dump of one process to C:\windows\TEMP\<name>.dmp.zip for GetFile.
.DESCRIPTION
  Uses MiniDumpWriteDump from dbghelp.dll (no third-party tool), then compresses the dump so
  that the result package is smaller. Shipped with the live response pipeline's bundled
  playbooks (shared/playbooks/library/minidump.ps1) and kept in the tenant's live response
  library by the pipeline, verified by SHA-256.
.PARAMETER Name
  The process name without ".exe" (the playbook's process_name placeholder: letters, digits,
  '-', '_' and '.'). The oldest process of that name is dumped.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true, Position = 0)]
    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')]
    [string]$Name
)

$ErrorActionPreference = 'Stop'
$target = Get-Process -Name $Name | Sort-Object StartTime | Select-Object -First 1
if (-not $target) {
    Write-Error "no process named $Name"
    exit 2
}

Add-Type -TypeDefinition @'
using System;
using System.IO;
using System.Runtime.InteropServices;
public static class LrDump {
    [DllImport("dbghelp.dll", SetLastError = true)]
    static extern bool MiniDumpWriteDump(IntPtr hProcess, uint processId, IntPtr hFile,
        uint dumpType, IntPtr exceptionParam, IntPtr userStreamParam, IntPtr callbackParam);
    public static void Write(System.Diagnostics.Process p, string path) {
        using (var fs = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None)) {
            // MiniDumpWithFullMemory | MiniDumpWithHandleData | MiniDumpWithThreadInfo
            const uint type = 0x2 | 0x4 | 0x1000;
            if (!MiniDumpWriteDump(p.Handle, (uint)p.Id, fs.SafeFileHandle.DangerousGetHandle(),
                    type, IntPtr.Zero, IntPtr.Zero, IntPtr.Zero)) {
                throw new System.ComponentModel.Win32Exception(Marshal.GetLastWin32Error());
            }
        }
    }
}
'@

$dump = Join-Path $env:windir "TEMP\$Name.dmp"
$zip = "$dump.zip"
Remove-Item -LiteralPath $dump, $zip -ErrorAction SilentlyContinue
[LrDump]::Write($target, $dump)
Compress-Archive -LiteralPath $dump -DestinationPath $zip -CompressionLevel Optimal
Remove-Item -LiteralPath $dump
$item = Get-Item -LiteralPath $zip
[ordered]@{
    process = $target.ProcessName
    pid     = $target.Id
    path    = $item.FullName
    bytes   = $item.Length
    sha256  = (Get-FileHash -LiteralPath $zip -Algorithm SHA256).Hash
} | ConvertTo-Json -Compress
