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

  The file is read once, opened for reading while others may still write it (a live event log),
  up to the length it had when the split began: the hashes are of the bytes copied into the parts,
  so the part map and the parts always agree, even if the file changed while it was read. Nothing
  is written outside the working folder, which only SYSTEM and the Administrators may change.

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

# Says why and ends with its own exit code (Write-Error alone would stop the script with code 1).
function Stop-Split([int]$Code, [string]$Message) {
    Write-Error -Message $Message -ErrorAction Continue
    exit $Code
}

if ($ExecutionContext.SessionState.LanguageMode -ne 'FullLanguage') {
    Stop-Split 3 "large-file-split.ps1 needs FullLanguage mode (this session runs in $($ExecutionContext.SessionState.LanguageMode) mode): the file cannot be split here; fetch it by other means"
}

if ($PathBase64Url -cnotmatch '\A[A-Za-z0-9_-]+={0,2}\z') {
    Stop-Split 6 "PathBase64Url must be base64url (letters, digits, - and _), got $PathBase64Url"
}
$b64 = $PathBase64Url.TrimEnd('=').Replace('-', '+').Replace('_', '/')
$b64 = $b64 + ('=' * ((4 - $b64.Length % 4) % 4))
try {
    $Path = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($b64))
} catch {
    Stop-Split 6 "PathBase64Url does not decode: $PathBase64Url"
}

$maxPart = 3000000000
if ($PartBytes -lt 1048576 -or $PartBytes -gt $maxPart) {
    Stop-Split 6 "PartBytes must be between 1048576 and $maxPart, got $PartBytes"
}
$temp = [System.IO.Path]::GetFullPath((Join-Path $env:SystemRoot 'Temp')).TrimEnd('\')
$full = [System.IO.Path]::GetFullPath($Folder)
$leaf = [System.IO.Path]::GetFileName($full)
if ([System.IO.Path]::GetDirectoryName($full) -ne $temp -or $leaf -cnotmatch '\Alr-large-[0-9a-f]{32}-[0-9]{1,3}\z') {
    Stop-Split 6 "Folder must be $temp\lr-large-<32 hex>-<index>, got $Folder"
}
if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
    Stop-Split 2 "no such file: $Path"
}
if (Test-Path -LiteralPath $full) {
    Stop-Split 5 "the working folder $full already exists; it is never overwritten"
}

$item = Get-Item -LiteralPath $Path -Force
$size = [long]$item.Length
$drive = [System.IO.DriveInfo]::new([System.IO.Path]::GetPathRoot($full))
# The parts take the file's size again; keep 1 GiB free beside them for the system.
$needed = $size + 1073741824
if ($drive.AvailableFreeSpace -lt $needed) {
    Stop-Split 4 "not enough free space on $($drive.Name) for the parts: $($drive.AvailableFreeSpace) bytes free, $needed needed"
}

# The folder is SYSTEM's and the Administrators' only (C:\Windows\Temp lets every user add to
# what it holds): nobody else can put a part, a link or a junction in it.
$acl = New-Object System.Security.AccessControl.DirectorySecurity
$acl.SetAccessRuleProtection($true, $false)
foreach ($sid in @('S-1-5-18', 'S-1-5-32-544')) {
    $who = New-Object System.Security.Principal.SecurityIdentifier($sid)
    $acl.AddAccessRule((New-Object System.Security.AccessControl.FileSystemAccessRule($who, 'FullControl', 'ContainerInherit, ObjectInherit', 'None', 'Allow')))
}
[void][System.IO.Directory]::CreateDirectory($full, $acl)
if ((Get-Item -LiteralPath $full -Force).Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
    Stop-Split 5 "the working folder $full is a link or junction; nothing was written"
}
$share = [System.IO.FileShare]::ReadWrite -bor [System.IO.FileShare]::Delete
$source = [System.IO.FileStream]::new($item.FullName, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, $share, 4194304)
# The native (CNG) implementations: the managed SHA256 of .NET Framework is several times slower.
$whole = New-Object System.Security.Cryptography.SHA256CryptoServiceProvider
$buffer = New-Object byte[] 4194304
$parts = New-Object System.Collections.Generic.List[object]
$offset = [long]0
try {
    $index = 0
    # The file as long as it was at the start: a file still being written does not run the split
    # past its time or its disk.
    while ($offset -lt $size -or $index -eq 0) {
        $index += 1
        $name = 'part-{0:D5}' -f $index
        $partHash = New-Object System.Security.Cryptography.SHA256CryptoServiceProvider
        $target = [System.IO.FileStream]::new((Join-Path $full $name), [System.IO.FileMode]::CreateNew, [System.IO.FileAccess]::Write, [System.IO.FileShare]::Read, 4194304)
        $written = [long]0
        try {
            $want = [Math]::Min($PartBytes, $size - $offset)
            while ($written -lt $want) {
                $chunk = [int][Math]::Min([long]$buffer.Length, $want - $written)
                $read = $source.Read($buffer, 0, $chunk)
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
        $parts.Add([ordered]@{
                name   = $name
                offset = $offset
                bytes  = $written
                sha256 = [System.BitConverter]::ToString($partHash.Hash).Replace('-', '').ToLowerInvariant()
            })
        $offset += $written
        # The file shrank while it was read: what was read is what the map says.
        if ($written -lt $want) { break }
    }
    [void]$whole.TransformFinalBlock($buffer, 0, 0)
} finally {
    $source.Dispose()
}

[ordered]@{
    v             = 1
    path          = $item.FullName
    bytes         = $offset
    size_at_start = $size
    sha256        = [System.BitConverter]::ToString($whole.Hash).Replace('-', '').ToLowerInvariant()
    part_bytes    = $PartBytes
    folder        = $full
    parts         = $parts.ToArray()
} | ConvertTo-Json -Depth 4 -Compress
