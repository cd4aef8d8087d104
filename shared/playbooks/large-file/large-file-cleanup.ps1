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
  named as the split script names them, directly under the Windows temporary folder, and in it
  only the split's parts (part-00001 ...), one by one: a link, a junction or any other file is left
  and listed. A folder that does not exist counts as removed (a cleanup may run twice).

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

function Stop-Cleanup([int]$Code, [string]$Message) {
    Write-Error -Message $Message -ErrorAction Continue
    exit $Code
}

$temp = (Join-Path $env:SystemRoot 'Temp').TrimEnd('\')
$leaf = Split-Path -Path $Folder -Leaf
$parent = (Split-Path -Path $Folder -Parent).TrimEnd('\')
if ($parent -ne $temp -or $leaf -cnotmatch '\Alr-large-[0-9a-f]{32}-[0-9]{1,3}\z') {
    Stop-Cleanup 6 "Folder must be $temp\lr-large-<32 hex>-<index>, got $Folder"
}

# Only the split's parts are removed, one by one, never recursively: Windows PowerShell's
# Remove-Item -Recurse follows junctions into their targets. A link, a junction or anything the
# split did not write is left where it is and named.
$remaining = @()
if (Test-Path -LiteralPath $Folder) {
    $folderItem = Get-Item -LiteralPath $Folder -Force
    if ($folderItem.Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
        $remaining = @($Folder)
    } else {
        foreach ($child in @(Get-ChildItem -LiteralPath $Folder -Force)) {
            $isPart = $child.Name -cmatch '\Apart-[0-9]{5}\z' -and -not $child.PSIsContainer -and
                -not ($child.Attributes -band [System.IO.FileAttributes]::ReparsePoint)
            if ($isPart) {
                Remove-Item -LiteralPath $child.FullName -Force -ErrorAction SilentlyContinue
            }
            if (Test-Path -LiteralPath $child.FullName) {
                $remaining += $child.FullName
            }
        }
        if ($remaining.Count -eq 0) {
            Remove-Item -LiteralPath $Folder -Force -ErrorAction SilentlyContinue
            if (Test-Path -LiteralPath $Folder) { $remaining = @($Folder) }
        }
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
