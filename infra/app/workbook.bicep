// The bridge's lifecycle at a glance: a shared Application Insights workbook over the bridge's own
// telemetry (alerts by action and outcome, answer latency, ITSM calls by status, the outbox, the
// credential, recent problems and alerts). It appears under the component's Workbooks and in Azure
// Monitor's workbook gallery.
//
// The definition lives in workbooks/bridge-lifecycle.workbook.json (edit it there, or in the portal's
// Advanced Editor and paste it back); the component's id is filled in as its fallback resource, so the
// workbook opens on the right data from anywhere.
param location string
param tags object

@description('Resource id of the Application Insights component the workbook queries and belongs to.')
param applicationInsightsId string

param displayName string = 'ITSM bridge: alert lifecycle'

var definition = loadJsonContent('workbooks/bridge-lifecycle.workbook.json')

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; derived from the component so redeploys update it in place.
  name: guid(applicationInsightsId, 'itsm-bridge-lifecycle-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    version: 'Notebook/1.0'
    serializedData: string(union(definition, { fallbackResourceIds: [ applicationInsightsId ] }))
  }
}

output id string = workbook.id
output name string = workbook.name
