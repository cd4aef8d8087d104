<#
.SYNOPSIS
  Removes the working folder large-file-split.ps1 made for one run, and says what, if anything,
  could not be removed, as one JSON document.
.DESCRIPTION
  Shipped with the live response pipeline's bundled playbooks
  (shared/playbooks/library/large-file-cleanup.ps1) and kept in the tenant's live response
  library by the pipeline, verified by SHA-256. The pipeline runs it after a GetLargeFile
  command's parts were fetched, and also when the run ends early (a part failed, the deadline
  passed, the run was cancelled), so the parts never stay on the device. It removes only a folder
  named as the split script names them, directly under the Windows temporary folder; a folder
  that does not exist counts as removed (a cleanup may run twice).

  Works in constrained language mode (it uses cmdlets only).

  Exit codes: 0 removed (or already gone); 4 something remained (listed in the output); 6 bad
  arguments.
.PARAMETER Folder
  The working folder: lr-large-<32 hex>-<command index> under the Windows temporary folder.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string]$Folder
)

$ErrorActionPreference = 'Stop'

$temp = (Join-Path $env:SystemRoot 'Temp').TrimEnd('\')
$leaf = Split-Path -Path $Folder -Leaf
$parent = (Split-Path -Path $Folder -Parent).TrimEnd('\')
if ($parent -ne $temp -or $leaf -notmatch '^lr-large-[0-9a-f]{32}-[0-9]{1,3}$') {
    Write-Error "Folder must be $temp\lr-large-<32 hex>-<index>, got $Folder"
    exit 6
}

$remaining = @()
if (Test-Path -LiteralPath $Folder) {
    Remove-Item -LiteralPath $Folder -Recurse -Force -ErrorAction SilentlyContinue
    if (Test-Path -LiteralPath $Folder) {
        $remaining = @(Get-ChildItem -LiteralPath $Folder -Force -Recurse -ErrorAction SilentlyContinue |
            ForEach-Object { $_.FullName })
        if ($remaining.Count -eq 0) { $remaining = @($Folder) }
    }
}
$result = [ordered]@{
    v         = 1
    folder    = $Folder
    removed   = ($remaining.Count -eq 0)
    remaining = $remaining
}
$result | ConvertTo-Json -Depth 3 -Compress
if ($remaining.Count -ne 0) { exit 4 }
