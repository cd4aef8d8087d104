<#
.SYNOPSIS
  Splits one file too large for a single GetFile into parts in a working folder, hashing the
  whole file and every part in the same pass, and prints the part map as one JSON document.
.DESCRIPTION
  Shipped with the live response pipeline's bundled playbooks
  (shared/playbooks/library/large-file-split.ps1) and kept in the tenant's live response library
  by the pipeline, verified by SHA-256. The pipeline runs it for a playbook's GetLargeFile
  command, fetches each part with GetFile in a follow-up action, joins the parts into one evidence
  object and checks every part and the whole file against the hashes printed here. It then runs
  large-file-cleanup.ps1, which removes the working folder.

  The file is read once, opened for reading while others may still write it (a live event log):
  the hashes are of the bytes copied into the parts, so the part map and the parts always agree,
  even if the file changed while it was read. Nothing is written outside the working folder.

  Needs FullLanguage mode (it streams the file through .NET): under constrained language mode it
  stops with exit code 3 and says so, before touching anything.

  Exit codes: 0 the part map was printed; 2 no such file; 3 constrained language mode; 4 not
  enough free space for the parts; 5 the working folder already exists (another run's, or a
  leftover: never overwritten); 6 bad arguments; 1 anything else.
.PARAMETER PathBase64Url
  The file's full path as UTF-8, base64url-encoded (RFC 4648 section 5, padding optional): the
  pipeline never puts a file name an attacker may have chosen into a command line as text, so
  spaces, quotes, a leading dash and non-ASCII names all arrive exactly. Taken literally (never
  as a wildcard pattern).
.PARAMETER PartBytes
  The largest part, in bytes (at least 1 MiB, at most 3 GB, Defender's GetFile limit).
.PARAMETER Folder
  The working folder the pipeline chose for this run: created here, named
  lr-large-<32 hex>-<command index> directly under the Windows temporary folder.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string]$PathBase64Url,
    [Parameter(Mandatory = $true)]
    [long]$PartBytes,
    [Parameter(Mandatory = $true)]
    [string]$Folder
)

$ErrorActionPreference = 'Stop'

if ($ExecutionContext.SessionState.LanguageMode -ne 'FullLanguage') {
    Write-Error "large-file-split.ps1 needs FullLanguage mode (this session runs in $($ExecutionContext.SessionState.LanguageMode) mode): the file cannot be split here; fetch it by other means"
    exit 3
}

if ($PathBase64Url -notmatch '^[A-Za-z0-9_-]+={0,2}$') {
    Write-Error "PathBase64Url must be base64url (letters, digits, - and _), got $PathBase64Url"
    exit 6
}
$b64 = $PathBase64Url.TrimEnd('=').Replace('-', '+').Replace('_', '/')
$b64 = $b64 + ('=' * ((4 - $b64.Length % 4) % 4))
$Path = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($b64))

$maxPart = 3000000000
if ($PartBytes -lt 1048576 -or $PartBytes -gt $maxPart) {
    Write-Error "PartBytes must be between 1048576 and $maxPart, got $PartBytes"
    exit 6
}
$temp = [System.IO.Path]::GetFullPath((Join-Path $env:SystemRoot 'Temp'))
$full = [System.IO.Path]::GetFullPath($Folder)
$leaf = [System.IO.Path]::GetFileName($full)
if ((Split-Path -LiteralPath $full -Parent) -ne $temp -or $leaf -notmatch '^lr-large-[0-9a-f]{32}-[0-9]{1,3}$') {
    Write-Error "Folder must be $temp\lr-large-<32 hex>-<index>, got $Folder"
    exit 6
}
if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
    Write-Error "no such file: $Path"
    exit 2
}
if (Test-Path -LiteralPath $full) {
    Write-Error "the working folder $full already exists; it is never overwritten"
    exit 5
}

$item = Get-Item -LiteralPath $Path -Force
$size = [long]$item.Length
$drive = [System.IO.DriveInfo]::new([System.IO.Path]::GetPathRoot($full))
# The parts take the file's size again; keep 1 GiB free beside them for the system.
$needed = $size + 1073741824
if ($drive.AvailableFreeSpace -lt $needed) {
    Write-Error "not enough free space on $($drive.Name) for the parts: $($drive.AvailableFreeSpace) bytes free, $needed needed"
    exit 4
}

[void](New-Item -ItemType Directory -Path $full)
$share = [System.IO.FileShare]::ReadWrite -bor [System.IO.FileShare]::Delete
$source = [System.IO.FileStream]::new($item.FullName, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, $share, 4194304)
$whole = [System.Security.Cryptography.SHA256]::Create()
$buffer = New-Object byte[] 4194304
$parts = New-Object System.Collections.Generic.List[object]
$offset = [long]0
try {
    $index = 0
    while ($true) {
        $index += 1
        $name = 'part-{0:D5}' -f $index
        $partHash = [System.Security.Cryptography.SHA256]::Create()
        $target = [System.IO.FileStream]::new((Join-Path $full $name), [System.IO.FileMode]::CreateNew, [System.IO.FileAccess]::Write, [System.IO.FileShare]::Read, 4194304)
        $written = [long]0
        try {
            while ($written -lt $PartBytes) {
                $want = [int][Math]::Min([long]$buffer.Length, $PartBytes - $written)
                $read = $source.Read($buffer, 0, $want)
                if ($read -le 0) { break }
                $target.Write($buffer, 0, $read)
                [void]$whole.TransformBlock($buffer, 0, $read, $null, 0)
                [void]$partHash.TransformBlock($buffer, 0, $read, $null, 0)
                $written += $read
            }
        } finally {
            $target.Dispose()
        }
        [void]$partHash.TransformFinalBlock($buffer, 0, 0)
        if ($written -eq 0 -and $index -gt 1) {
            # The file ended exactly at the last part's end: no empty part.
            Remove-Item -LiteralPath (Join-Path $full $name) -Force
            break
        }
        $parts.Add([ordered]@{
                name   = $name
                offset = $offset
                bytes  = $written
                sha256 = [System.BitConverter]::ToString($partHash.Hash).Replace('-', '').ToLowerInvariant()
            })
        $offset += $written
        if ($written -lt $PartBytes) { break }
    }
    [void]$whole.TransformFinalBlock($buffer, 0, 0)
} finally {
    $source.Dispose()
}

[ordered]@{
    v          = 1
    path       = $item.FullName
    bytes      = $offset
    size_at_start = $size
    sha256     = [System.BitConverter]::ToString($whole.Hash).Replace('-', '').ToLowerInvariant()
    part_bytes = $PartBytes
    folder     = $full
    parts      = $parts.ToArray()
} | ConvertTo-Json -Depth 4 -Compress
